#if canImport(Glibc)
import Glibc
#endif
import Control
import ArgumentParser
import CEVMSystem
import Foundation
import QEMU
import Records
import Supervisor
import Synchronization
import Turnaround
import TurnaroundReport
import VMStore

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
                units: units, jobSeconds: jobSeconds, counts: counts, configurations: configurations, cpuset: cpus, guest: guest,
                defaultAppend: defaults, attempts: attempts, keep: keep)
            try await runner.measureAndReport(keep: keep, json: common.json) { try await runner.run() }
        }
    }
}

// MARK: - Report

struct TurnaroundBenchReport: BenchReport {
    /// One checkpoint of a run, as the model sees it.
    struct Checkpoint: Encodable {
        /// Units the job had done when it was requested.
        var atUnits: Double
        var guestPause: Double
        var timeToDurable: Double
        /// The guest's running time from the request to `aftermath` (3 s)
        /// after the record is durable.
        var overlap: Double
        /// Units done in `overlap` over what the run's undisturbed rate does
        /// in it, clamped to 0...1.
        var progressDuringOverlap: Double?
        /// The same before clamping.
        var progressUnclamped: Double?
        /// pause + overlap × (1 − progress): the compute the job lost.
        var cost: Double
        var record: String
    }

    struct Run: Encodable {
        var label: String
        var mechanism: String?
        var policy: String?
        var checkpoints: Int
        /// Host seconds from the workload's first line to `cevm-job complete`.
        var turnaround: Double
        /// Units per host second outside the checkpoint windows.
        var undisturbedRate: Double?
        /// This run's own T_comp: the job's start-up (first line to first
        /// progress line) plus its units at `undisturbedRate`. Host speed
        /// drifts between runs by more than a checkpoint costs, so each run
        /// is predicted from its own undisturbed speed.
        var ownComputeTime: Double?
        var taken: [Checkpoint]
    }

    /// One mechanism (and policy) fitted and checked.
    struct Row: Encodable {
        var configuration: String
        var checkpoints: Int
        /// The run's own T_comp (`Run.ownComputeTime`).
        var computeTime: Double
        var measured: Double
        var predicted: Double?
        var errorPercent: Double?
        var measuredOverhead: Double
        var predictedOverhead: Double?
        var overheadErrorPercent: Double?
        var usedInFit: Bool
        var note: String?
    }

    struct Term: Encodable {
        var configuration: String
        var term: String
        /// δ: the mean cost per checkpoint.
        var perCheckpoint: Double?
        var pause: Double?
        var lostProgress: Double?
        var samples: Int
        /// CEVM: the fixed overhead, from the runs' turnarounds.
        var fixedOverhead: Double?
        var notes: [String]
    }

    typealias Target = BenchTarget

    /// A run whose guest died or hung (it is retried on a new guest).
    struct Loss: Encodable {
        var run: String
        var attempt: Int
        var reason: String
    }

    var cpus: Int
    var qemu: String
    var memoryMiB: Int
    var workload: String
    var units: Int
    /// T_comp: QEMU alone, first and last run, and their mean.
    var bareTurnarounds: [Double]
    var computeTime: Double
    var runs: [Run]
    var terms: [Term]
    var rows: [Row]
    var targets: [Target]
    var lost: [Loss] = []

    func text() -> String {
        func s(_ value: Double?) -> String { value.map { String(format: "%.2f s", $0) } ?? "-" }
        func pct(_ value: Double?) -> String { value.map { String(format: "%+.1f %%", $0) } ?? "-" }
        var out = [
            "cevm bench turnaround: \(cpus) CPUs, QEMU \(qemu), TCG; bundled guest with its disk, \(memoryMiB) MiB RAM, job of \(units) units (\(workload))",
            "T_comp (QEMU alone, first and last run): " + bareTurnarounds.map { s($0) }.joined(separator: ", ")
                + " → " + s(computeTime),
        ]
        if let plain = runs.first(where: { $0.checkpoints == 0 && $0.mechanism != nil }) {
            out.append("under cevm without a checkpoint: \(s(plain.turnaround)) (\(pct((plain.turnaround - computeTime) / computeTime * 100)) over T_comp)")
        }
        out.append("")
        out.append("Fitted terms (from this run's checkpoints; δ = mean of pause + overlap × (1 − progress))")
        var grid = [["configuration", "term", "δ", "pause", "lost progress", "samples", "T_o"]]
        for term in terms {
            grid.append([
                term.configuration, term.term, s(term.perCheckpoint), s(term.pause), s(term.lostProgress), "\(term.samples)",
                term.fixedOverhead.map { s($0) } ?? "",
            ])
        }
        out.append(table(grid))
        out.append("")
        out.append("Checkpoints (overlap = request → durable + 3 s, less the pause; progress = units in it / the run's undisturbed rate × overlap)")
        grid = [["run", "at units", "pause", "to durable", "overlap", "progress", "cost"]]
        for run in runs where !run.taken.isEmpty {
            for c in run.taken {
                grid.append([
                    run.label, String(format: "%.0f", c.atUnits), s(c.guestPause), s(c.timeToDurable), s(c.overlap),
                    c.progressUnclamped.map { String(format: "%.1f %%", $0 * 100) } ?? "-", s(c.cost),
                ])
            }
        }
        out.append(table(grid))
        out.append("")
        out.append("Predicted against measured (each run against its own T_comp: its start-up plus its units at its undisturbed rate)")
        grid = [["configuration", "n", "own T_comp", "measured T_vm", "predicted", "error", "overhead measured", "predicted", "error", ""]]
        for row in rows {
            grid.append([
                row.configuration, "\(row.checkpoints)", s(row.computeTime), s(row.measured), s(row.predicted), pct(row.errorPercent),
                s(row.measuredOverhead), s(row.predictedOverhead), pct(row.overheadErrorPercent),
                (row.usedInFit ? "T_o fitted from these runs" : "") + (row.note.map { " " + $0 } ?? ""),
            ])
        }
        out.append(table(grid))
        for term in terms where !term.notes.isEmpty {
            out.append("  \(term.configuration): " + term.notes.joined(separator: "; "))
        }
        if !lost.isEmpty {
            out.append("")
            out.append("Guests lost (each run is retried on a new guest)")
            for loss in lost { out.append("  \(loss.run), attempt \(loss.attempt): \(loss.reason)") }
        }
        out += BenchTarget.lines(targets)
        return out.joined(separator: "\n")
    }
}

// MARK: - The runner

final class TurnaroundBenchRunner: BenchDriver {
    struct Configuration: Sendable, Equatable {
        var mechanism: Mechanism
        var policy: AffinityPolicy?
        var label: String { mechanism.rawValue + (policy.map { " (\($0.rawValue))" } ?? "") }
    }

    let home: String
    let stop: AsyncSignal
    let memoryMiB: Int
    let workload: String
    let fixedUnits: Int?
    let jobSeconds: Double
    let counts: [Int]
    let configurations: [Configuration]
    let cpuset: CPUSet
    let guest: BundledGuest
    let defaultAppend: String
    let attempts: Int
    /// Keep each run's files (the VM directories, QEMU alone's console).
    let keep: Bool
    let started = Mutex<[String]>([])
    let bare = Mutex<[QEMUInstance]>([])

    init(
        home: String, stop: AsyncSignal, memoryMiB: Int, workload: String, units: Int?, jobSeconds: Double, counts: [Int],
        configurations: [Configuration], cpuset: CPUSet, guest: BundledGuest, defaultAppend: String, attempts: Int, keep: Bool
    ) {
        self.attempts = attempts
        self.keep = keep
        self.home = home
        self.stop = stop
        self.memoryMiB = memoryMiB
        self.workload = workload
        self.fixedUnits = units
        self.jobSeconds = jobSeconds
        self.counts = counts
        self.configurations = configurations
        self.cpuset = cpuset
        self.guest = guest
        self.defaultAppend = defaultAppend
    }

    /// Calibration's job: far more units than it runs.
    static let endless = 1_000_000_000_000

    func run() async throws -> TurnaroundBenchReport {
        let qemu = await BenchTools.qemuVersion()
        let units: Int
        if let fixedUnits {
            units = fixedUnits
        } else {
            Output.progress("calibrating: QEMU alone, \(Int(Self.calibration)) s of the job…")
            let rate = try await runBare(units: Self.endless, label: "calibration").rate
            units = max(100, Int((rate * jobSeconds).rounded()))
        }
        var bareTimes: [Double] = []
        Output.progress("T_comp: QEMU alone, \(units) units…")
        bareTimes.append(try await runBare(units: units, label: "bare-1").turnaround)
        var runs: [TurnaroundBenchReport.Run] = []
        var lost: [TurnaroundBenchReport.Loss] = []
        Output.progress("under cevm, no checkpoint…")
        if let run = try await attempt("under cevm, n=0", configuration: nil, n: 0, units: units, runs: runs.count, lost: &lost) {
            runs.append(run)
        }
        for configuration in configurations {
            for n in counts {
                Output.progress("\(configuration.label), n=\(n)…")
                let label = "\(configuration.label), n=\(n)"
                if let run = try await attempt(label, configuration: configuration, n: n, units: units, runs: runs.count, lost: &lost) {
                    runs.append(run)
                }
            }
        }
        Output.progress("T_comp again: QEMU alone…")
        bareTimes.append(try await runBare(units: units, label: "bare-2").turnaround)
        let computeTime = bareTimes.reduce(0, +) / Double(bareTimes.count)
        var report = try evaluate(qemu: qemu, units: units, bareTimes: bareTimes, computeTime: computeTime, runs: runs)
        report.lost = lost
        if !lost.isEmpty {
            report.targets.append(
                .init(
                    name: "every run kept its guest", value: "\(lost.count) guest(s) lost, \(runs.count) run(s) completed",
                    required: "none lost", met: false))
        }
        return report
    }

    // MARK: Fitting and validation

    func evaluate(
        qemu: String, units: Int, bareTimes: [Double], computeTime: Double, runs: [TurnaroundBenchReport.Run]
    ) throws -> TurnaroundBenchReport {
        var terms: [TurnaroundBenchReport.Term] = []
        var rows: [TurnaroundBenchReport.Row] = []
        let plain = runs.first { $0.checkpoints == 0 }
        for configuration in configurations {
            guard let mechanism = Turnaround.Mechanism(rawValue: configuration.mechanism.rawValue) else { continue }
            let mine = runs.filter { $0.label.hasPrefix(configuration.label + ",") }
            var samples: [Turnaround.CheckpointSample] = []
            for run in mine {
                for c in run.taken {
                    samples.append(
                        Turnaround.CheckpointSample(
                            mechanism: mechanism, guestPause: c.guestPause, timeToDurable: c.timeToDurable, overlap: c.overlap,
                            progressDuringOverlap: c.progressDuringOverlap))
                }
            }
            var measured = mine.map {
                Turnaround.MeasuredRun(
                    mechanism: mechanism, checkpoints: $0.checkpoints, turnaround: $0.turnaround,
                    computeTime: $0.ownComputeTime ?? computeTime)
            }
            // The run under cevm without a checkpoint anchors T_o's intercept.
            if mechanism == .cevm, let plain {
                measured.append(
                    Turnaround.MeasuredRun(
                        mechanism: .cevm, checkpoints: 0, turnaround: plain.turnaround, computeTime: plain.ownComputeTime ?? computeTime))
            }
            let model = try Turnaround.fit(samples: samples, runs: measured)
            let estimate = model.estimate(mechanism.term)
            let fixed = mechanism == .cevm ? model.estimate(.tO) : nil
            terms.append(
                .init(
                    configuration: configuration.label, term: mechanism.term.rawValue, perCheckpoint: estimate?.seconds,
                    pause: estimate?.components?.guestPause.mean, lostProgress: estimate?.components?.lostProgress.mean,
                    samples: samples.count, fixedOverhead: fixed?.seconds,
                    notes: (estimate?.notes ?? []) + (fixed?.notes ?? [])))
            let validation = try Turnaround.validate(model, runs: measured.filter { $0.checkpoints > 0 })
            for row in validation.rows {
                rows.append(
                    .init(
                        configuration: configuration.label, checkpoints: row.checkpoints, computeTime: row.computeTime,
                        measured: row.measured, predicted: row.predicted, errorPercent: row.errorPercent,
                        measuredOverhead: row.measured - row.computeTime, predictedOverhead: row.predicted.map { $0 - row.computeTime },
                        overheadErrorPercent: row.overheadErrorPercent,
                        usedInFit: row.usedInFit, note: row.note))
            }
        }
        var targets: [TurnaroundBenchReport.Target] = []
        for row in rows {
            targets.append(
                .init(
                    name: "\(row.configuration), n=\(row.checkpoints): predicted turnaround within 10 %",
                    value: row.errorPercent.map { String(format: "%+.2f %%", $0) } ?? "no prediction", required: "|error| ≤ 10 %",
                    met: row.errorPercent.map { abs($0) <= 10 } ?? false))
        }
        return TurnaroundBenchReport(
            cpus: ProcessInfo.processInfo.activeProcessorCount, qemu: qemu, memoryMiB: memoryMiB, workload: workload, units: units,
            bareTurnarounds: bareTimes, computeTime: computeTime, runs: runs, terms: terms, rows: rows, targets: targets)
    }

    // MARK: QEMU alone

    /// Seconds of the job measured to calibrate its length.
    static let calibration = 8.0

    /// Runs the job under QEMU alone (its own qcow2 copy of the bundled disk,
    /// pinned to `cpuset`, no cevm in the I/O path) until `cevm-job complete`,
    /// or for `calibration` seconds of progress when `units` is `endless`.
    func runBare(units: Int, label: String) async throws -> (turnaround: Double, rate: Double) {
        try checkStop()
        let directory = "\(home)/\(label)"
        try Files.makeDirectory(directory, mode: 0o700)
        defer { if !keep { BenchScratch.remove(directory) } }
        let image = "\(directory)/disk.qcow2"
        try await QEMUImg.convert(guest.disk, sourceFormat: "raw", to: image)
        let consolePath = "\(directory)/console.log"
        let console = try ConsoleLog(path: consolePath)
        let config = InstanceConfig(
            name: label, memoryMiB: memoryMiB, vcpus: 1, accel: .tcg,
            boot: .kernel(kernel: guest.kernel, initrd: guest.initrd, append: "\(defaultAppend) \(workload) cevm.job=\(units)"),
            drive: .init(file: image, format: "qcow2"), qmpSocket: "\(directory)/qmp.sock", cpuModel: QEMUCommandLine.defaultCPUModel(for: .tcg),
            ramPaddingKiB: QEMUCommandLine.ramPaddingKiB(for: try? await QEMUVersion.of()))
        let instance = try await QEMUInstance.launch(
            config, stderrLog: "\(directory)/qemu.log", cpuset: cpuset, console: console.sink(instance: 0))
        bare.withLock { $0.append(instance) }
        defer { bare.withLock { $0.removeAll { $0 === instance } } }
        let calibrating = units == Self.endless
        let deadline = ContinuousClock.now + .seconds(calibrating ? 300 : jobSeconds * 6 + 300)
        var result: (Double, Double)?
        while result == nil {
            try checkStop()
            if let start = ConsoleProgress.firstLine(consolePath, startingWith: BundledGuest.readyMarker) {
                let ticks = ConsoleProgress.ticks(consolePath)
                if calibrating, let first = ticks.first, let last = ticks.last, last.time - first.time >= Self.calibration {
                    result = (0, (last.counter - first.counter) / (last.time - first.time))
                } else if !calibrating, let end = ConsoleProgress.firstLine(consolePath, startingWith: "cevm-job complete") {
                    result = (end - start, ConsoleProgress.rate(from: ticks.first?.time ?? start, to: end, in: ticks) ?? 0)
                }
            }
            if result == nil, instance.exitReason != nil {
                throw CLIError("QEMU alone (\(label)) ended before the job did; console:\n\(ConsoleProgress.tail(consolePath))")
            }
            if result == nil, ContinuousClock.now > deadline {
                await instance.stop()
                throw CLIError("QEMU alone (\(label)): the job did not finish in time; see \(consolePath)")
            }
            if result == nil { try await Task.sleep(for: .milliseconds(200)) }
        }
        // The job powers the guest off; calibration is stopped.
        if calibrating {
            await instance.stop()
        } else if await instance.process.wait(timeout: .seconds(60)) == nil {
            await instance.stop()
        }
        guard let (turnaround, rate) = result else { throw CLIError("unreachable") }
        return (turnaround, rate)
    }

    // MARK: Under cevm

    struct CheckpointOutput: Decodable {
        var directory: String
        var manifest: RecordManifest
    }

    /// `cevm run` the job; with a configuration, checkpoint k of n is
    /// requested once the job has done k/(n+1) of its units.
    func runUnderCEVM(name: String, configuration: Configuration?, n: Int, units: Int) async throws -> TurnaroundBenchReport.Run {
        try checkStop()
        let paths = Home(root: home).vm(try VMName(name))
        started.withLock { $0.append(name) }
        let result: (end: Double, manifests: [(units: Double, output: CheckpointOutput)])
        do {
            _ = try await cevmChecked(
                [
                    "run", name, "--accel", "tcg", "--memory", "\(memoryMiB)M", "--cpuset", cpuset.description, "--append",
                    "\(workload) cevm.job=\(units)",
                ], timeout: .seconds(300))
            result = try await checkpointAndFinish(name: name, paths: paths, configuration: configuration, n: n, units: units)
        } catch {
            _ = try? await cevm(["stop", name], timeout: .seconds(120))
            started.withLock { $0.removeAll { $0 == name } }
            if !keep { BenchScratch.remove(paths.directory) }
            throw error
        }
        // The guest powers off and the supervisor ends; make sure of it.
        let stopBy = ContinuousClock.now + .seconds(60)
        while paths.readStatus()?.state.isLive ?? false, ContinuousClock.now < stopBy { try await Task.sleep(for: .milliseconds(200)) }
        _ = try? await cevm(["stop", name], timeout: .seconds(120))
        started.withLock { $0.removeAll { $0 == name } }
        guard let start = ConsoleProgress.firstLine(paths.consoleLog, startingWith: BundledGuest.readyMarker) else {
            throw CLIError("\(name): no workload start line; see \(paths.consoleLog)")
        }
        let ticks = ConsoleProgress.ticks(paths.consoleLog)
        let measured = Self.measure(ticks: ticks, checkpoints: result.manifests)
        var own: Double?
        if let rate = measured.rate, rate > 0, let first = ticks.first {
            own = first.time - start + (Double(units) - first.counter) / rate
        }
        let run = TurnaroundBenchReport.Run(
            label: configuration.map { "\($0.label), n=\(n)" } ?? "under cevm, n=0", mechanism: configuration?.mechanism.rawValue ?? "none",
            policy: configuration?.policy?.rawValue, checkpoints: result.manifests.count, turnaround: result.end - start,
            undisturbedRate: measured.rate, ownComputeTime: own, taken: measured.checkpoints)
        if !keep { BenchScratch.remove(paths.directory) }
        return run
    }

    /// Takes the run's checkpoints as the job reaches each k/(n+1) of its
    /// units, then waits for the job's end (its host time is returned).
    func checkpointAndFinish(
        name: String, paths: VMPaths, configuration: Configuration?, n: Int, units: Int
    ) async throws -> (end: Double, manifests: [(units: Double, output: CheckpointOutput)]) {
        let deadline = ContinuousClock.now + .seconds(jobSeconds * 8 + 600)
        func waitFor(_ what: String, _ done: () -> Bool) async throws {
            while !done() {
                try checkStop()
                if let status = paths.readStatus(), !status.state.isLive {
                    throw GuestLost(
                        reason: "the VM ended (\(status.state.rawValue): \(status.message ?? status.exitReason ?? "")) before \(what)",
                        console: ConsoleProgress.tail(paths.consoleLog))
                }
                // A guest that printed nothing for a while is hung (seen after
                // QEMU 7.2 TCG migrations, Docs/benchmarks.md "Lost guests").
                let last = ConsoleProgress.lines(paths.consoleLog).last?.time ?? Timestamp.wallSeconds()
                if Timestamp.wallSeconds() - last > Self.silenceLimit {
                    throw GuestLost(
                        reason: "no console line for \(Int(Self.silenceLimit)) s before \(what)", console: ConsoleProgress.tail(paths.consoleLog))
                }
                if ContinuousClock.now > deadline { throw CLIError("\(name): timed out waiting for \(what); see \(paths.consoleLog)") }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        var manifests: [(units: Double, output: CheckpointOutput)] = []
        if let configuration {
            for k in 1...n {
                let threshold = Double(units) * Double(k) / Double(n + 1)
                var reached = 0.0
                try await waitFor("unit \(Int(threshold))") {
                    reached = ConsoleProgress.ticks(paths.consoleLog).last?.counter ?? 0
                    return reached >= threshold
                }
                var arguments = ["checkpoint", name, "--mechanism", configuration.mechanism.rawValue, "--json"]
                if let policy = configuration.policy { arguments += ["--policy", policy.rawValue] }
                let output = try await cevm(arguments)
                guard output.status.succeeded else {
                    if !(paths.readStatus()?.state.isLive ?? false) {
                        throw GuestLost(reason: "cevm checkpoint \(output.status): \(output.stderr)", console: ConsoleProgress.tail(paths.consoleLog))
                    }
                    throw CLIError("cevm \(arguments.joined(separator: " ")) \(output.status): \(output.stderr)")
                }
                do {
                    manifests.append((reached, try JSONDecoder().decode(CheckpointOutput.self, from: Data(output.stdout.utf8))))
                } catch {
                    throw CLIError("cevm checkpoint --json printed something unexpected (\(error)): \(output.stdout.prefix(400))")
                }
            }
        }
        var end: Double?
        try await waitFor("the job's end") {
            end = ConsoleProgress.firstLine(paths.consoleLog, startingWith: "cevm-job complete")
            return end != nil
        }
        return (end ?? 0, manifests)
    }

    /// Seconds without a console line after which a running guest counts as hung.
    static let silenceLimit = 30.0

    /// The guest died or hung during a run: the run is retried on a new guest.
    struct GuestLost: Error {
        var reason: String
        var console: String
    }

    /// `runUnderCEVM`, again on a new guest (up to `attempts` in all) while
    /// the guest is lost; each loss is reported.
    func attempt(
        _ label: String, configuration: Configuration?, n: Int, units: Int, runs: Int, lost: inout [TurnaroundBenchReport.Loss]
    ) async throws -> TurnaroundBenchReport.Run? {
        for attempt in 1...attempts {
            do {
                return try await runUnderCEVM(name: "run\(runs)-\(attempt)", configuration: configuration, n: n, units: units)
            } catch let error as GuestLost {
                StandardError.write("cevm: \(label), attempt \(attempt): guest lost: \(error.reason); console tail:\n\(error.console)\n")
                lost.append(.init(run: label, attempt: attempt, reason: error.reason))
            }
        }
        return nil
    }

    /// Seconds after a record is durable still counted as its aftermath
    /// (the old instance ending, write-back, New_VM's first moments) rather
    /// than undisturbed.
    static let aftermath = 3.0

    /// The run's undisturbed rate (units per host second outside every
    /// checkpoint's window and its aftermath), and each checkpoint's overlap
    /// and progress measured against it.
    static func measure(
        ticks: [ConsoleProgress.Tick], checkpoints: [(units: Double, output: CheckpointOutput)]
    ) -> (rate: Double?, checkpoints: [TurnaroundBenchReport.Checkpoint]) {
        guard let first = ticks.first, let last = ticks.last else { return (nil, []) }
        // Each checkpoint's window on the host clock, and its pause.
        let windows = checkpoints.map { entry -> (start: Double, end: Double, pause: (Double, Double)?) in
            let t = entry.output.manifest.timings
            guard let pausedAt = Timestamp.parse(t.pausedAt) else { return (0, 0, nil) }
            let start = pausedAt - t.requestToPauseMs / 1000
            let resumed = Timestamp.parse(t.resumedAt) ?? pausedAt
            return (start, start + t.requestToDurableMs / 1000, resumed > pausedAt ? (pausedAt, resumed) : nil)
        }
        var units = 0.0, seconds = 0.0, from = first.time
        for window in windows.sorted(by: { $0.start < $1.start }) + [(last.time, last.time, nil)] {
            let to = min(window.start, last.time)
            if to > from, let a = ConsoleProgress.counter(at: from, in: ticks, pause: nil),
                let b = ConsoleProgress.counter(at: to, in: ticks, pause: nil)
            {
                units += b - a
                seconds += to - from
            }
            from = max(from, window.end + aftermath)
        }
        let rate = seconds > 0 ? units / seconds : nil
        var out: [TurnaroundBenchReport.Checkpoint] = []
        for (entry, window) in zip(checkpoints, windows) {
            let t = entry.output.manifest.timings
            let pause = t.guestPauseMs / 1000
            // The overlap runs from the request to `aftermath` after the
            // record is durable, less the pause: console lines that arrive
            // late in the window, a slow start of New_VM or the old side's
            // write-back then count where they happen.
            let until = min(window.end + aftermath, last.time)
            let overlap = max(0, until - window.start - pause)
            var progress: Double?
            if let rate, rate > 0, overlap > 0,
                let a = ConsoleProgress.counter(at: window.start, in: ticks, pause: window.pause),
                let b = ConsoleProgress.counter(at: until, in: ticks, pause: window.pause)
            {
                progress = (b - a) / (rate * overlap)
            }
            let clamped = progress.map { min(1, max(0, $0)) }
            out.append(
                .init(
                    atUnits: entry.units, guestPause: pause, timeToDurable: t.requestToDurableMs / 1000, overlap: overlap,
                    progressDuringOverlap: clamped, progressUnclamped: progress,
                    cost: pause + overlap * (1 - (clamped ?? 1)), record: entry.output.directory))
        }
        return (rate, out)
    }

    /// Stops every VM and QEMU this run started (best effort).
    func cleanUp() async {
        for name in started.withLock({ $0 }) {
            _ = try? await cevm(["stop", name], timeout: .seconds(120))
        }
        started.withLock { $0 = [] }
        for instance in bare.withLock({ $0 }) { await instance.stop() }
    }
}
