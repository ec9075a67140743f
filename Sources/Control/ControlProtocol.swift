import Foundation
import CEVMSystem
import Records
import VMStore

/// The supervisor's control socket speaks JSON lines: one request, one
/// response, per line.
///
///     client                         supervisor
///       | {"op":"status"}\n              |
///       |------------------------------->|
///       |      {"ok":true,"status":{..}}\n|
///       |<-------------------------------|
public enum ControlRequest: Codable, Sendable {
    case status
    case stop
    case checkpoint(CheckpointOptions)
    /// Sets the VM's checkpoint schedule; nil turns it off.
    case schedule(ScheduleOptions?)
    /// A restored VM held paused (`--paused`) runs.
    case resume
}

/// What `cevm schedule` asks for: one of `everySeconds` / `mtbfSeconds`.
public struct ScheduleOptions: Codable, Sendable, Equatable {
    /// A fixed interval between checkpoints (wall-clock seconds).
    public var everySeconds: Double?
    /// An MTBF: the interval is chosen from the measured checkpoint cost
    /// (Young's or Daly's formula, whichever applies; the status says which).
    public var mtbfSeconds: Double?
    public var checkpoint: CheckpointOptions
    /// Keep this many newest records; older ones are removed (retention).
    public var keep: Int?

    public init(everySeconds: Double?, mtbfSeconds: Double?, checkpoint: CheckpointOptions, keep: Int?) {
        self.everySeconds = everySeconds
        self.mtbfSeconds = mtbfSeconds
        self.checkpoint = checkpoint
        self.keep = keep
    }

    public var summary: String {
        var parts: [String] = []
        if let everySeconds { parts.append("every \(Self.duration(everySeconds))") }
        if let mtbfSeconds { parts.append("for an MTBF of \(Self.duration(mtbfSeconds))") }
        parts.append(checkpoint.mechanism.rawValue)
        if let policy = checkpoint.policy { parts.append("policy \(policy.rawValue)") }
        if let keep { parts.append("keep \(keep)") }
        return parts.joined(separator: ", ")
    }

    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, abs(seconds) < 1e15 else { return "\(seconds) s" }
        if seconds >= 3600, seconds.truncatingRemainder(dividingBy: 3600) == 0 { return "\(Int(seconds / 3600)) h" }
        if seconds >= 60, seconds.truncatingRemainder(dividingBy: 60) == 0 { return "\(Int(seconds / 60)) min" }
        if seconds >= 100 { return "\(Int(seconds.rounded())) s" }
        return String(format: "%.1f s", seconds)
    }
}

/// CEVM: what cevm does when a migration's memory stream passes
/// `CheckpointOptions.maxStreamBytes` (pre-copy that does not converge).
public enum StreamLimitAction: String, Codable, Sendable, CaseIterable {
    /// Force the switch-over: QEMU's `downtime-limit` is raised so that its
    /// next round is the last; the guest pauses while the rest is sent.
    case switchOver = "switch-over"
    /// Cancel the migration: the checkpoint fails, the VM runs on Old_VM.
    case cancel
}

/// DESIGN.md "Affinity policies": where New_VM runs and where the old side
/// (Old_VM until it ends, the stream tee, the disk integration) serialises.
public enum AffinityPolicy: String, Codable, Sendable, CaseIterable {
    /// New_VM on the VM's CPU set; the old side on the same set.
    case shared
    /// New_VM on the VM's CPU set; the old side on a set reserved for checkpointing.
    case dedicated
    /// New_VM on the set the VM did not use last epoch; the old side on the set it leaves.
    case alternate
}

/// What `cevm checkpoint` asks for.
public struct CheckpointOptions: Codable, Sendable, Equatable {
    public var mechanism: Mechanism
    /// Write a full disk record even when an incremental one is possible.
    public var full: Bool
    /// CEVM only: the affinity policy and its CPU sets (nil: defaults).
    public var policy: AffinityPolicy?
    public var cpus: CPUSet?
    public var checkpointCPUs: CPUSet?
    /// CEVM only: QEMU's `downtime-limit` in ms (nil: cevm's default for CEVM, 50).
    public var downtimeLimitMs: Int64?
    /// CEVM only: the most bytes the memory stream (and so the record's
    /// memory file) may reach in pre-copy before `onMaxStream` is taken
    /// (nil: `defaultMaxStreamBytes` of the VM's RAM).
    public var maxStreamBytes: Int64?
    /// CEVM only: what happens at `maxStreamBytes` (nil: switch over).
    public var onMaxStream: StreamLimitAction?
    /// CEVM only: QEMU's `auto-converge` capability (the source's vCPUs are
    /// throttled while the guest dirties memory faster than it is sent).
    public var autoConverge: Bool
    /// The record format to write (nil: the current one, 2; 1 keeps QEMU's
    /// raw stream, for comparisons).
    public var recordFormat: Int?
    /// A member of this group checkpoint: its networks are being cut, and a
    /// mechanism that keeps its instance cuts them in place while paused.
    public var group: String?

    /// The default stream cap: 3 × RAM + 256 MiB. A converging pre-copy sent
    /// 0.8–1.7 × RAM in the benchmarks; a forced switch-over adds at most
    /// about RAM, so the memory file stays below 4 × RAM + 256 MiB.
    public static func defaultMaxStreamBytes(memoryMiB: Int) -> Int64 {
        (3 * Int64(memoryMiB) + 256) << 20
    }

    public init(
        mechanism: Mechanism, full: Bool = false, policy: AffinityPolicy? = nil, cpus: CPUSet? = nil,
        checkpointCPUs: CPUSet? = nil, downtimeLimitMs: Int64? = nil, maxStreamBytes: Int64? = nil,
        onMaxStream: StreamLimitAction? = nil, autoConverge: Bool = false
    ) {
        self.mechanism = mechanism
        self.full = full
        self.policy = policy
        self.cpus = cpus
        self.checkpointCPUs = checkpointCPUs
        self.downtimeLimitMs = downtimeLimitMs
        self.maxStreamBytes = maxStreamBytes
        self.onMaxStream = onMaxStream
        self.autoConverge = autoConverge
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        mechanism = try container.decode(Mechanism.self, forKey: .mechanism)
        full = try container.decodeIfPresent(Bool.self, forKey: .full) ?? false
        policy = try container.decodeIfPresent(AffinityPolicy.self, forKey: .policy)
        cpus = try container.decodeIfPresent(CPUSet.self, forKey: .cpus)
        checkpointCPUs = try container.decodeIfPresent(CPUSet.self, forKey: .checkpointCPUs)
        downtimeLimitMs = try container.decodeIfPresent(Int64.self, forKey: .downtimeLimitMs)
        maxStreamBytes = try container.decodeIfPresent(Int64.self, forKey: .maxStreamBytes)
        onMaxStream = try container.decodeIfPresent(StreamLimitAction.self, forKey: .onMaxStream)
        autoConverge = try container.decodeIfPresent(Bool.self, forKey: .autoConverge) ?? false
        recordFormat = try container.decodeIfPresent(Int.self, forKey: .recordFormat)
        group = try container.decodeIfPresent(String.self, forKey: .group)
    }
}

extension CheckpointOptions: Validatable {
    /// `downtime-limit` (ms) a checkpoint may ask for (QEMU takes up to
    /// 2000 s; a longer pause is stop-and-save's business).
    public static let downtimeLimitRangeMs: ClosedRange<Int64> = 1...2000
    /// The stream cap: at least one byte, at most 1 PiB.
    public static let maxStreamRange: ClosedRange<Int64> = 1...(Int64(1) << 50)

    public func validate() throws(InvalidValue) {
        try Validate.integer(downtimeLimitMs, "--downtime-limit (ms)", in: Self.downtimeLimitRangeMs)
        try Validate.integer(maxStreamBytes, "--max-stream (bytes)", in: Self.maxStreamRange)
        try Validate.integer(recordFormat, "--record-format", in: 1...2)
    }
}

extension ScheduleOptions: Validatable {
    /// The shortest and longest fixed interval (a 0 s interval would be a
    /// hot loop of checkpoints).
    public static let intervalRange: ClosedRange<Double> = 1...(366 * 86400)
    public static let mtbfRange: ClosedRange<Double> = 1...(100 * 366 * 86400)
    public static let keepRange = 1...100_000

    public func validate() throws(InvalidValue) {
        guard (everySeconds == nil) != (mtbfSeconds == nil) else {
            throw InvalidValue(
                what: "schedule", value: everySeconds == nil ? "with neither" : "with both", expected: "either an interval (--every) or an MTBF (--mtbf)")
        }
        try Validate.number(everySeconds, "--every", in: Self.intervalRange, unit: " s")
        try Validate.number(mtbfSeconds, "--mtbf", in: Self.mtbfRange, unit: " s")
        try Validate.integer(keep, "--keep", in: Self.keepRange)
        try checkpoint.validate()
    }
}

public struct ControlMessage: Codable, Sendable {
    public var op: String
    public var checkpoint: CheckpointOptions?
    public var schedule: ScheduleOptions?

    public init(_ request: ControlRequest) {
        switch request {
        case .status: op = "status"
        case .stop: op = "stop"
        case .resume: op = "resume"
        case .checkpoint(let options):
            op = "checkpoint"
            checkpoint = options
        case .schedule(let options):
            op = options == nil ? "schedule-off" : "schedule"
            schedule = options
        }
    }

    /// The request, checked: every number in it is refused here, before
    /// the supervisor acts on it, when out of range.
    public func validatedRequest() throws(InvalidValue) -> ControlRequest? {
        guard let request else { return nil }
        switch request {
        case .status, .stop, .resume, .schedule(nil): break
        case .checkpoint(let options): try options.validate()
        case .schedule(let options?): try options.validate()
        }
        return request
    }

    public var request: ControlRequest? {
        switch op {
        case "status": return .status
        case "stop": return .stop
        case "resume": return .resume
        case "checkpoint": return checkpoint.map { .checkpoint($0) }
        case "schedule": return schedule.map { .schedule($0) }
        case "schedule-off": return .schedule(nil)
        default: return nil
        }
    }
}

public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var status: VMStatus?
    public var error: String?
    /// The committed record, for a checkpoint.
    public var record: RecordManifest?
    public var recordDirectory: String?

    public init(ok: Bool, status: VMStatus? = nil, error: String? = nil) {
        self.ok = ok
        self.status = status
        self.error = error
    }
}

/// What the control socket's client could not do.
public enum ControlError: Error, Sendable, CustomStringConvertible {
    /// The supervisor could not be reached, did not answer in time, or answered nonsense.
    case unreachable(VMName, String)

    public var description: String {
        switch self {
        case .unreachable(let name, let reason): return "cannot reach the supervisor of '\(name)': \(reason)"
        }
    }
}
