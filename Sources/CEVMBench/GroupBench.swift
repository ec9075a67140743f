import CEVMSystem
import Foundation
import Records
import Supervisor
import Synchronization
import VMStore

/// `cevm bench group`: for N guests on one cevm network with checked TCP
/// streams running between pairs of them, each member checkpointed one by
/// one, then all of them as one group checkpoint, on the same guests in one
/// run. Per mode: each member's pause (QEMU's) and host-observed console
/// gap, the time until everything is durable; for the group also the
/// frames held for members that had not cut (in all, at most at once, the
/// longest hold) and the frames recorded as channel state. The target:
/// the group's largest pause within 20 ms of the largest single pause.
struct GroupBenchReport: BenchReport {
    struct Row: Encodable {
        var guests: Int
        var repetition: Int
        /// one-by-one or group
        var mode: String
        var pausesMs: [Double]
        var largestPauseMs: Double
        var largestConsoleGapMs: Double?
        /// From the first request to the last record durable (one by one: their sum), or to the group's commit.
        var toDurableMs: Double
        var framesHeld: Int?
        var mostHeld: Int?
        var longestHoldMs: Double?
        var channelFrames: Int?
        /// The receivers' counters after the mode: gaps + duplicates + damaged + resets, summed.
        var streamErrors: Int
    }

    var qemu: String
    var memoryMiB: Int
    var mechanism: String
    var policy: String?
    var rows: [Row]
    var targets: [BenchTarget]

    func text() -> String {
        func msText(_ value: Double?) -> String { value.map { String(format: "%.0f ms", $0) } ?? "-" }
        var lines = ["Group checkpoint: \(memoryMiB) MiB guests, \(mechanism)\(policy.map { ", policy \($0)" } ?? ""), QEMU \(qemu)", ""]
        var table = [[
            "guests", "#", "mode", "largest pause", "pauses", "console gap", "to durable", "held", "most held", "longest hold", "in flight",
            "stream errors",
        ]]
        for row in rows {
            table.append([
                "\(row.guests)", "\(row.repetition)", row.mode, msText(row.largestPauseMs), row.pausesMs.map { String(format: "%.0f", $0) }.joined(separator: "/"),
                msText(row.largestConsoleGapMs), msText(row.toDurableMs), row.framesHeld.map(String.init) ?? "-",
                row.mostHeld.map(String.init) ?? "-", msText(row.longestHoldMs), row.channelFrames.map(String.init) ?? "-", "\(row.streamErrors)",
            ])
        }
        lines.append(CEVMBench.table(table))
        lines += BenchTarget.lines(targets)
        return lines.joined(separator: "\n")
    }
}

public final class GroupBenchRunner: BenchDriver {
    let home: String
    let sizes: [Int]
    let memoryMiB: Int
    let rate: Int
    let mechanism: Mechanism
    let policy: String?
    let repeats: Int
    let stop: AsyncSignal
    let started = Mutex<[String]>([])
    let networks = Mutex<[String]>([])

    public init(home: String, sizes: [Int], memoryMiB: Int, rate: Int, mechanism: Mechanism, policy: String?, repeats: Int, stop: AsyncSignal) {
        self.repeats = repeats
        self.home = home
        self.sizes = sizes
        self.memoryMiB = memoryMiB
        self.rate = rate
        self.mechanism = mechanism
        self.policy = policy
        self.stop = stop
    }

    public func runAndReport(keep: Bool, json: Bool) async throws {
        try await measureAndReport(keep: keep, json: json) { try await run() }
    }

    func cleanUp() async {
        for name in started.withLock({ $0 }) { _ = try? await cevm(["stop", name], timeout: .seconds(120)) }
        started.withLock { $0 = [] }
        for network in networks.withLock({ $0 }) { _ = try? await cevm(["net", "rm", network, "--force"], timeout: .seconds(60)) }
        networks.withLock { $0 = [] }
    }

    func console(_ name: String) -> String { "\(home)/vms/\(name)/console.log" }

    /// The last `cevm-net recv=` line of a receiver, as numbers.
    func progress(_ name: String) -> [String: Int] {
        guard let line = ConsoleProgress.lines(console(name)).last(where: { $0.text.contains("cevm-net recv=") }) else { return [:] }
        var values: [String: Int] = [:]
        for field in line.text.split(separator: " ") {
            let parts = field.split(separator: "=", maxSplits: 1)
            if parts.count == 2, let value = Int(parts[1]) { values[String(parts[0])] = value }
        }
        return values
    }

    func streamErrors(_ receivers: [String]) -> Int {
        receivers.reduce(0) { sum, rx in
            let p = progress(rx)
            return sum + ["gaps", "dups", "bad", "resets"].reduce(0) { $0 + (p[$1] ?? 0) }
        }
    }

    /// N guests on `network`: receiver/sender pairs (a lone receiver when N is odd).
    func boot(count: Int, network: String) async throws -> (members: [String], receivers: [String]) {
        var members: [String] = []
        var receivers: [String] = []
        for index in 0..<count {
            let pair = index / 2
            let isReceiver = index % 2 == 0
            let name = "\(network)-\(isReceiver ? "rx" : "tx")\(pair)"
            let mode =
                isReceiver
                ? "cevm.tick=20 cevm.ip=10.8.\(pair).1/24 cevm.net=recv:5000"
                : "cevm.tick=20 cevm.ip=10.8.\(pair).2/24 cevm.net=send:10.8.\(pair).1:5000 cevm.netrate=\(rate)"
            BenchOutput.progress("\(count) guest(s): booting \(name)…")
            started.withLock { $0.append(name) }
            _ = try await cevmChecked(
                ["run", name, "--accel", "tcg", "--memory", "\(memoryMiB)M", "--nic", "net=\(network)", "--append", mode], timeout: .seconds(300))
            members.append(name)
            if isReceiver && index + 1 < count { receivers.append(name) }
        }
        let deadline = ContinuousClock.now + .seconds(180)
        while !receivers.allSatisfy({ (progress($0)["recv"] ?? 0) > 2 * rate }) {
            try checkStop()
            if ContinuousClock.now > deadline { throw BenchError("the streams of \(network) did not start within 180 s") }
            try await Task.sleep(for: .milliseconds(200))
        }
        return (members, receivers)
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return 0 }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    var checkpointOptions: [String] { ["--mechanism", mechanism.rawValue] + (policy.map { ["--policy", $0] } ?? []) }

    struct MemberOutput: Decodable { var manifest: RecordManifest }
    struct GroupOutput: Decodable {
        var group: GroupManifest
        var members: [MemberOutput]
    }

    func run() async throws -> GroupBenchReport {
        let qemu = await BenchTools.qemuVersion()
        var rows: [GroupBenchReport.Row] = []
        var targets: [BenchTarget] = []
        for count in sizes {
            let network = "g\(count)"
            _ = try await cevmChecked(["net", "create", network])
            networks.withLock { $0.append(network) }
            let (members, receivers) = try await boot(count: count, network: network)
            var singleLargest: [Double] = []
            var groupLargest: [Double] = []
            for repetition in 1...repeats {
                // One by one.
                var singles: [RecordManifest] = []
                for member in members {
                    try checkStop()
                    BenchOutput.progress("\(count) guest(s), #\(repetition): checkpoint \(member)…")
                    let out = try await cevmChecked(["checkpoint", member, "--json"] + checkpointOptions)
                    singles.append(try JSONDecoder().decode(MemberOutput.self, from: Data(out.utf8)).manifest)
                    try await pause(2)
                }
                let singlePauses = singles.map(\.timings.guestPauseMs)
                singleLargest.append(singlePauses.max() ?? 0)
                rows.append(
                    .init(
                        guests: count, repetition: repetition, mode: "one-by-one", pausesMs: singlePauses, largestPauseMs: singlePauses.max() ?? 0,
                        largestConsoleGapMs: singles.compactMap(\.timings.consoleGapMs).max(),
                        toDurableMs: singles.reduce(0) { $0 + $1.timings.requestToDurableMs }, streamErrors: streamErrors(receivers)))
                // As one group.
                try await pause(2)
                BenchOutput.progress("\(count) guest(s), #\(repetition): group checkpoint…")
                let out = try await cevmChecked(["checkpoint", "--net", network, "--json"] + checkpointOptions)
                let group = try JSONDecoder().decode(GroupOutput.self, from: Data(out.utf8))
                let net = group.group.networks.first
                groupLargest.append(group.group.largestPauseMs)
                try await pause(3)
                rows.append(
                    .init(
                        guests: count, repetition: repetition, mode: "group", pausesMs: group.group.members.map(\.guestPauseMs),
                        largestPauseMs: group.group.largestPauseMs, largestConsoleGapMs: group.members.compactMap(\.manifest.timings.consoleGapMs).max(),
                        toDurableMs: group.group.requestToCommitMs, framesHeld: net?.framesHeld, mostHeld: net?.mostHeld,
                        longestHoldMs: net?.longestHoldMs, channelFrames: net?.frames, streamErrors: streamErrors(receivers)))
            }
            let single = Self.median(singleLargest)
            let grouped = Self.median(groupLargest)
            targets.append(
                BenchTarget(
                    name: "\(count) guest(s): group's largest pause (median of \(repeats))", value: String(format: "%.0f ms", grouped),
                    required: String(format: "≤ %.0f ms (largest single + 20 ms)", single + 20), met: grouped <= single + 20))
            for member in members {
                _ = try? await cevm(["stop", member], timeout: .seconds(120))
                started.withLock { $0.removeAll { $0 == member } }
            }
            _ = try? await cevm(["net", "rm", network, "--force"])
            networks.withLock { $0.removeAll { $0 == network } }
        }
        return GroupBenchReport(
            qemu: qemu, memoryMiB: memoryMiB, mechanism: mechanism.rawValue, policy: policy, rows: rows, targets: targets)
    }
}
