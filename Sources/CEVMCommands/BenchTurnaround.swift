import ArgumentParser
import CEVMBench
import CEVMSystem
import Control
import Records
import Supervisor

/// `cevm bench turnaround`: seed 001's turnaround model checked against real
/// runs. The bundled guest's job mode (a fixed number of work units, then
/// power off) runs to completion undisturbed under QEMU alone (T_comp), under
/// cevm without a checkpoint, and with n checkpoints per mechanism and
/// policy; the model is fitted from the checkpoints' records and the guest's
/// own progress around them, and its predicted turnaround is compared with
/// the measured one. Docs/benchmarks.md has the procedure and a reading.
struct BenchTurnaround: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "turnaround",
        abstract: "Predicted against measured job turnaround, per mechanism and policy.",
        discussion: """
            Runs the bundled guest's job mode (cevm.job=N) to completion: twice under QEMU alone \
            (first and last: T_comp and its drift), once under cevm without a checkpoint, and once per \
            mechanism (CEVM: per policy) and per n in --checkpoints, with checkpoint k requested when \
            the job has done k/(n+1) of its units. Turnaround is the host time from the workload's \
            first console line to its `cevm-job complete` line. Each mechanism's term is fitted from \
            its own checkpoints (pause, plus the progress the guest lost while the checkpoint ran, \
            measured from its console), T_o from the CEVM runs' turnarounds (Docs/turnaround.md), and \
            the prediction is compared with each run. Nothing is asserted: the 10 % target is printed \
            with "met" or "not met".
            """)

    @Option(help: "Guest RAM.")
    var memory: String = "512M"

    @Option(name: .customLong("working-set"), help: "The job's working set (cevm.mem), default RAM/2 - 64M.")
    var workingSet: String?

    @Option(help: "Pages the job rewrites per unit (cevm.pages).")
    var pages: Int = 32

    @Option(help: "Pages the job verifies per unit (cevm.verify).")
    var verify: Int = 256

    @Option(help: "Disk records the job writes per unit (cevm.disk; its log is appended and synced every progress line anyway).")
    var disk: Int = 0

    @Option(help: "Guest milliseconds between two progress lines (cevm.tick).")
    var tick: Int = 100

    @Option(help: "Work units of the job (default: as many as QEMU alone does in --job-seconds, measured first).")
    var units: Int?

    @Option(name: .customLong("job-seconds"), help: "The job's length undisturbed, when --units is not given.")
    var jobSeconds: Double = 40

    @Option(help: "Checkpoint counts n, comma-separated (each a run per mechanism and policy).")
    var checkpoints: String = "2,4"

    @Option(help: "Mechanisms, comma-separated: \(Mechanism.allCases.map(\.rawValue).joined(separator: ", ")).")
    var mechanisms: String = "stop-and-save,background-snapshot,cevm"

    @Option(help: "CEVM's affinity policies, comma-separated (shared, dedicated, alternate).")
    var policies: String = "shared,dedicated,alternate"

    @Option(help: "Host CPUs the job runs on (cevm run --cpuset; QEMU alone is pinned there too).")
    var cpuset: String = "0"

    @Option(help: "Runs tried, each on a new guest, when the guest dies or hangs.")
    var attempts: Int = 3

    @Flag(help: "Keep the temporary CEVM_HOME (its VMs are stopped anyway).")
    var keep = false

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            guard (1...10).contains(attempts) else { throw CLIError("--attempts 1...10") }
            let mib = Int(try parseSize(memory, defaultUnit: 1 << 20) >> 20)
            guard mib >= 128 else { throw CLIError("--memory \(memory): at least 128M") }
            let set = try workingSet.map { Int(try parseSize($0, defaultUnit: 1 << 20) >> 20) } ?? max(16, mib / 2 - 64)
            guard set >= 1, set + 48 <= mib else { throw CLIError("--working-set \(set) MiB does not fit in \(mib) MiB of RAM") }
            guard (1...1_000_000).contains(pages), (1...1_000_000).contains(verify), (0...1000).contains(disk), (10...10_000).contains(tick)
            else { throw CLIError("--pages and --verify 1...1000000, --disk 0...1000, --tick 10...10000 ms") }
            if let units, units < 1 { throw CLIError("--units must be at least 1") }
            guard jobSeconds >= 5, jobSeconds <= 86_400 else { throw CLIError("--job-seconds 5...86400") }
            var counts: [Int] = []
            for text in checkpoints.split(separator: ",") {
                guard let n = Int(text.trimmingCharacters(in: .whitespaces)), (1...100).contains(n) else {
                    throw CLIError("--checkpoints '\(text)': each count 1...100")
                }
                if !counts.contains(n) { counts.append(n) }
            }
            var configurations: [TurnaroundBenchRunner.Configuration] = []
            let chosenPolicies = try policies.split(separator: ",").map { text in
                guard let policy = AffinityPolicy(rawValue: text.trimmingCharacters(in: .whitespaces)) else {
                    throw CLIError("unknown policy '\(text)' (shared, dedicated, alternate)")
                }
                return policy
            }
            for text in mechanisms.split(separator: ",") {
                guard let mechanism = Mechanism(rawValue: text.trimmingCharacters(in: .whitespaces)) else {
                    throw CLIError("unknown mechanism '\(text)' (\(Mechanism.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                let added = mechanism == .cevm ? chosenPolicies.map { (mechanism, Optional($0)) } : [(mechanism, nil)]
                for (m, p) in added where !configurations.contains(where: { $0.mechanism == m && $0.policy == p }) {
                    configurations.append(.init(mechanism: m, policy: p))
                }
            }
            guard !counts.isEmpty, !configurations.isEmpty else { throw CLIError("nothing to measure") }
            let cpus = try CPUSet(parsing: cpuset)
            let guest = BundledGuest.locate()
            let defaults = try guest.defaultAppend()
            let home = try BenchScratch.make(in: nil, prefix: "cevm-bench-turnaround")
            let stop = AsyncSignal()
            let sources = DiskServe.installSignalHandlers(stop)
            defer { sources.forEach { $0.cancel() } }
            let runner = TurnaroundBenchRunner(
                home: home, stop: stop, memoryMiB: mib,
                workload: "cevm.mem=\(set) cevm.pages=\(pages) cevm.disk=\(disk) cevm.tick=\(tick) cevm.verify=\(verify)",
                units: units, jobSeconds: jobSeconds, counts: counts, configurations: configurations, cpuset: cpus,
                guest: BenchGuest(kernel: guest.kernel, initrd: guest.initrd, disk: guest.disk),
                defaultAppend: defaults, attempts: attempts, keep: keep)
            try await runner.runAndReport(keep: keep, json: common.json)
        }
    }
}
