import Control
import ArgumentParser
import CEVMSystem
import Foundation
import Records
import Supervisor
import VMStore

extension Mechanism: ExpressibleByArgument {}
extension AffinityPolicy: ExpressibleByArgument {}
extension StreamLimitAction: ExpressibleByArgument {}

struct Checkpoint: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Checkpoint a running VM into a new record, or several VMs into one group record.",
        discussion: """
            A record is committed when its manifest is durable; a failed checkpoint leaves no record and the VM running. \
            Several names, or --net NET (every running VM on the network), take one group checkpoint: a consistent cut \
            of the VMs and the cevm networks between them (frames in flight across it are recorded with the group); \
            its id is the first word printed, and `cevm restore GROUP_ID` restores every member.
            """)

    @Argument(help: "The VM's name; several names take a group checkpoint.") var names: [String] = []

    @Option(help: "Group checkpoint of every running VM attached to this cevm network (with any names given).")
    var net: String?

    @Option(help: "How to take it: \(Mechanism.allCases.map(\.rawValue).joined(separator: ", ")).")
    var mechanism: Mechanism = .cevm

    @Flag(help: "Write full records: memory (every page) and disk (over the base image), even when increments over the previous record are possible.")
    var full = false

    @Option(
        name: .customLong("record-format"),
        help: "The record format: 2 keeps each memory page once, incremental over the previous record (default); 1 keeps QEMU's raw migration stream.")
    var recordFormat: Int?

    @Option(help: "CEVM: where the VM and the checkpointing run: shared, dedicated, alternate (default shared).")
    var policy: AffinityPolicy?

    @Option(help: "CEVM: the VM's CPU set, e.g. 0-1 (default: its pinned set, else half the CPUs).")
    var cpus: String?

    @Option(name: .customLong("checkpoint-cpus"), help: "CEVM: the checkpoint CPU set for dedicated/alternate (default: the other CPUs).")
    var checkpointCPUs: String?

    @Option(name: .customLong("downtime-limit"), help: "CEVM: QEMU's migration downtime-limit in ms (default 50; QEMU's own is 300).")
    var downtimeLimit: Int64?

    @Option(
        name: .customLong("max-stream"),
        help: "CEVM: the most the memory stream (the record's memory file) may grow to before the migration converges, e.g. 2G; a plain number is MiB (default 3 × RAM + 256M).")
    var maxStream: String?

    @Option(
        name: .customLong("on-max-stream"),
        help: "CEVM: at --max-stream, switch-over (force the switch-over: the guest pauses while the rest is sent) or cancel (the checkpoint fails, the VM runs on) (default switch-over).")
    var onMaxStream: StreamLimitAction?

    @Flag(name: .customLong("auto-converge"), help: "CEVM: let QEMU throttle the guest's vCPUs while it dirties memory faster than it is sent.")
    var autoConverge = false

    @OptionGroup var common: CommonOptions

    func options() throws -> CheckpointOptions {
        func set(_ text: String?, _ option: String) throws -> CPUSet? {
            guard let text else { return nil }
            do { return try CPUSet(parsing: text) } catch { throw CLIError("\(option) \(text): \(error)") }
        }
        if mechanism != .cevm
            && (policy != nil || cpus != nil || checkpointCPUs != nil || downtimeLimit != nil || maxStream != nil
                || onMaxStream != nil || autoConverge)
        {
            throw CLIError(
                "--policy, --cpus, --checkpoint-cpus, --downtime-limit, --max-stream, --on-max-stream and --auto-converge apply to --mechanism cevm")
        }
        let maxStreamBytes: Int64?
        if let maxStream {
            do { maxStreamBytes = try parseSize(maxStream, defaultUnit: 1 << 20) } catch { throw CLIError("--max-stream: \(error)") }
        } else {
            maxStreamBytes = nil
        }
        var options = CheckpointOptions(
            mechanism: mechanism, full: full, policy: policy, cpus: try set(cpus, "--cpus"),
            checkpointCPUs: try set(checkpointCPUs, "--checkpoint-cpus"), downtimeLimitMs: downtimeLimit,
            maxStreamBytes: maxStreamBytes, onMaxStream: onMaxStream, autoConverge: autoConverge)
        options.recordFormat = recordFormat
        // The supervisor checks the same again when the request arrives.
        try options.validate()
        return options
    }

    func run() async throws {
        if names.count > 1 || net != nil { return try await runGroup() }
        guard let single = names.first else { throw ValidationError("name a VM to checkpoint (or several, or --net NET)") }
        try await Output.reporting {
            let (name, paths) = try VMArgument.existing(single, in: common.home)
            guard paths.supervisorAlive else { throw SupervisorError.notRunning(name) }
            Output.progress("\(name): checkpoint (\(mechanism.rawValue))…")
            let response = try await ControlClient.send(.checkpoint(try options()), to: paths, name: name)
            Output.endProgress()
            guard response.ok, let manifest = response.record else {
                throw CLIError(response.error ?? "checkpoint failed")
            }
            if common.json { return try Output.json(RecordSummary(manifest: manifest, directory: response.recordDirectory ?? "")) }
            let bytes = manifest.files.reduce(0) { $0 + $1.size }
            Output.line(
                "\(manifest.id)  \(manifest.mechanism.rawValue)  guest paused \(ms(manifest.timings.guestPauseMs)), "
                    + "durable after \(ms(manifest.timings.requestToDurableMs)), \(formatBytes(bytes))")
        }
    }
}

extension Checkpoint {
    struct GroupSummary: Encodable {
        var group: GroupManifest
        var directory: String
        var members: [RecordSummary]
    }

    func runGroup() async throws {
        try await Output.reporting {
            let home = common.home
            let members = try GroupCheckpoint.members(names: names, network: net, home: home)
            let checkpoint = GroupCheckpoint(home: home, members: members, options: try options())
            let result = try await checkpoint.run { Output.progress($0) }
            Output.endProgress()
            let group = result.record.manifest
            defer { for casualty in checkpoint.casualties() { Output.notice("warning: \(casualty)") } }
            if common.json {
                return try Output.json(
                    GroupSummary(
                        group: group, directory: result.record.directory,
                        members: result.members.map { RecordSummary(manifest: $0.record, directory: $0.directory) }))
            }
            let frames = group.networks.reduce(0) { $0 + $1.frames }
            Output.line(
                "\(group.id)  group of \(group.members.count), largest pause \(ms(group.largestPauseMs)), "
                    + "\(frames) frame(s) in flight recorded, committed after \(ms(group.requestToCommitMs))")
            for member in group.members {
                Output.line("  \(member.vm)  \(member.record)  \(member.mechanism.rawValue)  guest paused \(ms(member.guestPauseMs))")
            }
        }
    }
}

func ms(_ value: Double) -> String {
    value >= 1000 ? String(format: "%.2f s", value / 1000) : String(format: "%.0f ms", value)
}

func formatBytes(_ bytes: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}
