import Control
import ArgumentParser
import CEVMSystem
import Foundation
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

    @OptionGroup var vm: VMArgument
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
        try await Output.reporting {
            let (name, paths) = try vm.existing(in: common.home)
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
