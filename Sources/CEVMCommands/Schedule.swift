import Control
import ArgumentParser
import CEVMSystem
import Foundation
import NetSwitchControl
import Records
import Supervisor
import VMStore

/// `cevm schedule`: checkpoints taken by the VM's supervisor on a schedule.
struct ScheduleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule",
        abstract: "Checkpoint a running VM on a schedule (the supervisor takes them), or stop doing so.",
        discussion: """
            --every takes a checkpoint at that interval. --mtbf chooses the interval from the measured \
            cost of this VM's checkpoints of the mechanism and the mean time between failures, with \
            Young's formula when it is accurate enough and Daly's otherwise (`cevm status` says which \
            and why); with no measured checkpoint yet, the first one is taken after 5 s to measure it. A failed \
            checkpoint is retried after twice the interval, then four times, and so on up to an hour. --keep N removes \
            older records after each checkpoint, merging an incremental record's parent into it first \
            so that every kept record stays restorable. The schedule survives a restart of the VM. \
            Durations accept s, m, h and d suffixes.
            """)

    @Argument(help: "The VM's name.") var name: String?
    @Option(help: "Group checkpoints of every running VM on this cevm network instead (--every only; the network's switch takes them; --keep counts group records).")
    var net: String?
    @Option(help: "Take a checkpoint every DURATION.") var every: String?
    @Option(help: "Choose the interval for this mean time between failures.") var mtbf: String?
    @Flag(help: "Stop the schedule.") var off = false
    @Option(help: "The mechanism: \(Mechanism.allCases.map(\.rawValue).joined(separator: ", ")).")
    var mechanism: Mechanism = .cevm
    @Option(help: "CEVM: shared, dedicated or alternate.") var policy: AffinityPolicy?
    @Option(help: "CEVM: the VM's CPU set.") var cpus: String?
    @Option(name: .customLong("checkpoint-cpus"), help: "CEVM: the checkpoint CPU set.") var checkpointCPUs: String?
    @Option(help: "Keep the N newest records; remove older ones after each checkpoint.") var keep: Int?

    @OptionGroup var common: CommonOptions

    func run() async throws {
        if let net {
            if name != nil { throw ValidationError("give a VM's name or --net NET, not both") }
            return try await runGroup(network: net)
        }
        try await Output.reporting {
            guard let text = self.name else { throw ValidationError("name a VM (or --net NET)") }
            let (name, paths) = try VMArgument.existing(text, in: common.home)
            guard paths.supervisorAlive else { throw SupervisorError.notRunning(name) }
            let request: ScheduleOptions?
            if off {
                if every != nil || mtbf != nil || keep != nil { throw CLIError("--off takes no other schedule option") }
                request = nil
            } else {
                guard (every == nil) != (mtbf == nil) else { throw CLIError("give --every DURATION or --mtbf DURATION (or --off)") }
                func set(_ text: String?, _ option: String) throws -> CPUSet? {
                    guard let text else { return nil }
                    do { return try CPUSet(parsing: text) } catch { throw CLIError("\(option) \(text): \(error)") }
                }
                if mechanism != .cevm && (policy != nil || cpus != nil || checkpointCPUs != nil) {
                    throw CLIError("--policy, --cpus and --checkpoint-cpus apply to --mechanism cevm")
                }
                let checkpoint = CheckpointOptions(
                    mechanism: mechanism, policy: policy, cpus: try set(cpus, "--cpus"),
                    checkpointCPUs: try set(checkpointCPUs, "--checkpoint-cpus"))
                let options = ScheduleOptions(
                    everySeconds: try every.map { try parseDuration($0, option: "--every") },
                    mtbfSeconds: try mtbf.map { try parseDuration($0, option: "--mtbf") },
                    checkpoint: checkpoint, keep: keep)
                // The supervisor checks the same again when the request arrives.
                try options.validate()
                request = options
            }
            let response = try await ControlClient.send(.schedule(request), to: paths, name: name)
            guard response.ok else { throw CLIError(response.error ?? "the supervisor refused the schedule") }
            // The loop publishes the interval it chose a moment later.
            var status = response.status
            for _ in 0..<20 where request != nil && status?.schedule?.intervalReason == nil {
                try await Task.sleep(for: .milliseconds(100))
                status = paths.readStatus()
            }
            if common.json { return try Output.json(status?.schedule) }
            guard let schedule = status?.schedule else { return Output.line("\(name): schedule off") }
            Output.line(Self.describe(schedule).joined(separator: "\n"))
        }
    }

    func runGroup(network text: String) async throws {
        try await Output.reporting {
            let network = try parseNetworkName(text)
            let paths = NetPaths(root: common.home.root, name: network)
            guard Files.exists(paths.directory) else { throw CLIError("\(NetworkError.noSuchNetwork(text))") }
            if off {
                if every != nil || mtbf != nil || keep != nil { throw CLIError("--off takes no other schedule option") }
                Files.remove(GroupSchedule.file(paths))
                return Output.line("\(network): group schedule off")
            }
            if mtbf != nil { throw CLIError("--mtbf chooses a VM's interval from its own costs: a network's schedule takes --every") }
            guard let every else {
                // No change asked: what the switch reports.
                let status = GroupSchedule.read(paths) == nil ? nil : GroupSchedule.readStatus(paths)
                if common.json { return try Output.json(status) }
                guard let status else { return Output.line("\(network): no group schedule (give --every DURATION)") }
                var lines = ["schedule:    group checkpoints of \(network), \(status.summary)"]
                if let next = status.nextDueAt { lines.append("next due:    \(next)") }
                for result in status.recent.suffix(3) {
                    lines.append(
                        "last:        \(result.at) " + (result.ok ? result.group ?? "?" : "failed: \(result.message ?? "")")
                            + (result.removed.isEmpty ? "" : ", removed \(result.removed.count) old group(s)"))
                }
                return Output.line(lines.joined(separator: "\n"))
            }
            if mechanism != .cevm && (policy != nil || cpus != nil || checkpointCPUs != nil) {
                throw CLIError("--policy, --cpus and --checkpoint-cpus apply to --mechanism cevm")
            }
            let options = ScheduleOptions(
                everySeconds: try parseDuration(every, option: "--every"), mtbfSeconds: nil,
                checkpoint: CheckpointOptions(mechanism: mechanism, policy: policy), keep: keep)
            try options.validate()
            try Files.writeAtomically(Array(try JSONEncoder().encode(options)), to: GroupSchedule.file(paths))
            if !FileLock.isHeld(paths.lock) { _ = try await startSwitch(network, home: common.home) }
            if common.json { return try Output.json(options) }
            Output.line("\(network): group checkpoints \(options.summary), taken by the network's switch")
        }
    }

    static func describe(_ schedule: ScheduleState) -> [String] {
        var lines = ["schedule:    \(schedule.summary)"]
        if let interval = schedule.intervalSeconds {
            lines.append("interval:    \(ScheduleOptions.duration(interval))" + (schedule.intervalReason.map { " — \($0)" } ?? ""))
        }
        if let next = schedule.nextDueAt { lines.append("next due:    \(next)") }
        for result in schedule.recent.suffix(3) {
            let what = result.ok ? "\(result.record ?? "?") (pause \(result.guestPauseMs.map { String(format: "%.0f ms", $0) } ?? "?"))" : "failed: \(result.message ?? "")"
            lines.append("last:        \(result.at) \(what)" + (result.removed.isEmpty ? "" : ", removed \(result.removed.count) old record(s)"))
        }
        return lines
    }
}
