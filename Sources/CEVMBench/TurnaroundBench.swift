#if canImport(Glibc)
import Glibc
#endif
import Control
import CEVMSystem
import Foundation
import QEMU
import Records
import Supervisor
import Synchronization
import Turnaround
import TurnaroundReport
import VMStore

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
        /// The host's estimate of the same loss, from the vCPU threads'
        /// run time (the manifest's `timings.cost.lostMs`), over its own
        /// window (request → durable); nil with the reason in `hostNote`.
        var hostLost: Double?
        var hostWindow: Double?
        var hostNote: String?
        /// The guest's own loss over the host's window, against its rate
        /// in the 2 s before the request (the estimate's baseline): the
        /// same question the host answers, asked of the guest's counter.
        var guestSameWindow: Double?
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
        out.append("cost: what the guest's own counter lost; host estimate: the vCPU threads' run time against their rate in the 2 s before (request → durable);")
        out.append("guest, same window: the guest's counter over the host's window against its own rate in the same 2 s before")
        grid = [["run", "at units", "pause", "to durable", "overlap", "progress", "cost", "host estimate", "guest, same window", "difference"]]
        for run in runs where !run.taken.isEmpty {
            for c in run.taken {
                grid.append([
                    run.label, String(format: "%.0f", c.atUnits), s(c.guestPause), s(c.timeToDurable), s(c.overlap),
                    c.progressUnclamped.map { String(format: "%.1f %%", $0 * 100) } ?? "-", s(c.cost),
                    c.hostLost.map { s($0) } ?? "- (\(c.hostNote ?? "none"))", s(c.guestSameWindow),
                    c.hostLost.flatMap { host in c.guestSameWindow.map { String(format: "%+.3f s", host - $0) } } ?? "",
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

public final class TurnaroundBenchRunner: BenchDriver {
    public struct Configuration: Sendable, Equatable {
        public var mechanism: Mechanism
        public var policy: AffinityPolicy?

        public init(mechanism: Mechanism, policy: AffinityPolicy?) {
            self.mechanism = mechanism
            self.policy = policy
        }

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
    let guest: BenchGuest
    let defaultAppend: String
    let attempts: Int
    /// Keep each run's files (the VM directories, QEMU alone's console).
    let keep: Bool
    let started = Mutex<[String]>([])
    let bare = Mutex<[QEMUInstance]>([])

    /// Runs every configuration, then prints the report (JSON or a table)
    /// on stdout, having stopped every VM and removed the CEVM_HOME.
    public func runAndReport(keep: Bool, json: Bool) async throws {
        try await measureAndReport(keep: keep, json: json) { try await run() }
    }

    public init(
        home: String, stop: AsyncSignal, memoryMiB: Int, workload: String, units: Int?, jobSeconds: Double, counts: [Int],
        configurations: [Configuration], cpuset: CPUSet, guest: BenchGuest, defaultAppend: String, attempts: Int, keep: Bool
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
            BenchOutput.progress("calibrating: QEMU alone, \(Int(Self.calibration)) s of the job…")
            let rate = try await runBare(units: Self.endless, label: "calibration").rate
            units = max(100, Int((rate * jobSeconds).rounded()))
        }
        var bareTimes: [Double] = []
        BenchOutput.progress("T_comp: QEMU alone, \(units) units…")
        bareTimes.append(try await runBare(units: units, label: "bare-1").turnaround)
        var runs: [TurnaroundBenchReport.Run] = []
        var lost: [TurnaroundBenchReport.Loss] = []
        BenchOutput.progress("under cevm, no checkpoint…")
        if let run = try await attempt("under cevm, n=0", configuration: nil, n: 0, units: units, runs: runs.count, lost: &lost) {
            runs.append(run)
        }
        for configuration in configurations {
            for n in counts {
                BenchOutput.progress("\(configuration.label), n=\(n)…")
                let label = "\(configuration.label), n=\(n)"
                if let run = try await attempt(label, configuration: configuration, n: n, units: units, runs: runs.count, lost: &lost) {
                    runs.append(run)
                }
            }
        }
        BenchOutput.progress("T_comp again: QEMU alone…")
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
        var targets = Self.hostEstimateTargets(runs: runs, configurations: configurations)
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

    /// The host-side estimate against the guest's own measure: per
    /// configuration, the mean of each over its checkpoints within 20 % (or
    /// 50 ms) of the guest's, and the configurations ranked the same way
    /// by both (Docs/turnaround.md, "The host-side estimate").
    static func hostEstimateTargets(runs: [TurnaroundBenchReport.Run], configurations: [Configuration])
        -> [TurnaroundBenchReport.Target]
    {
        var targets: [TurnaroundBenchReport.Target] = []
        var means: [(label: String, guest: Double, host: Double)] = []
        for configuration in configurations {
            let taken = runs.filter { $0.label.hasPrefix(configuration.label + ",") }.flatMap(\.taken)
            // Like with like: the guest's loss over the host's window and baseline.
            let paired = taken.compactMap { c in
                c.hostLost.flatMap { host in c.guestSameWindow.map { (guest: max(0, $0), host: max(0, host)) } }
            }
            guard !paired.isEmpty else {
                if !taken.isEmpty {
                    targets.append(
                        .init(
                            name: "\(configuration.label): host estimate within 20 % (or 50 ms) of the guest's loss (same window)",
                            value: "no host estimate in \(taken.count) checkpoint(s)", required: "an estimate", met: false))
                }
                continue
            }
            let guest = paired.map(\.guest).reduce(0, +) / Double(paired.count)
            let host = paired.map(\.host).reduce(0, +) / Double(paired.count)
            means.append((configuration.label, guest, host))
            let gap = host - guest
            targets.append(
                .init(
                    name: "\(configuration.label): host estimate within 20 % (or 50 ms) of the guest's loss (same window)",
                    value: String(format: "host %.3f s, guest %.3f s (%+.3f s, %d checkpoint(s))", host, guest, gap, paired.count),
                    required: "|difference| ≤ max(20 %, 0.050 s)", met: abs(gap) <= max(0.2 * guest, 0.05)))
        }
        if means.count >= 2 {
            let byGuest = means.sorted { $0.guest < $1.guest }.map(\.label)
            let byHost = means.sorted { $0.host < $1.host }.map(\.label)
            targets.append(
                .init(
                    name: "mechanisms ranked the same by the host estimate and the guest's loss (same window)",
                    value: "guest: " + byGuest.joined(separator: " < ") + "; host: " + byHost.joined(separator: " < "),
                    required: "the same order", met: byGuest == byHost))
        } else if configurations.count >= 2 {
            // The target is reported either way: not met when it cannot be judged.
            targets.append(
                .init(
                    name: "mechanisms ranked the same by the host estimate and the guest's loss (same window)",
                    value: "\(means.count) configuration(s) with a guest measure over the host's window",
                    required: "two or more, in the same order", met: false))
        }
        return targets
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
            if let start = ConsoleProgress.firstLine(consolePath, startingWith: BenchGuest.readyMarker) {
                let ticks = ConsoleProgress.ticks(consolePath)
                if calibrating, let first = ticks.first, let last = ticks.last, last.time - first.time >= Self.calibration {
                    result = (0, (last.counter - first.counter) / (last.time - first.time))
                } else if !calibrating, let end = ConsoleProgress.firstLine(consolePath, startingWith: "cevm-job complete") {
                    result = (end - start, ConsoleProgress.rate(from: ticks.first?.time ?? start, to: end, in: ticks) ?? 0)
                }
            }
            if result == nil, instance.exitReason != nil {
                throw BenchError("QEMU alone (\(label)) ended before the job did; console:\n\(ConsoleProgress.tail(consolePath))")
            }
            if result == nil, ContinuousClock.now > deadline {
                await instance.stop()
                throw BenchError("QEMU alone (\(label)): the job did not finish in time; see \(consolePath)")
            }
            if result == nil { try await Task.sleep(for: .milliseconds(200)) }
        }
        // The job powers the guest off; calibration is stopped.
        if calibrating {
            await instance.stop()
        } else if await instance.process.wait(timeout: .seconds(60)) == nil {
            await instance.stop()
        }
        guard let (turnaround, rate) = result else { throw BenchError("unreachable") }
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
        guard let start = ConsoleProgress.firstLine(paths.consoleLog, startingWith: BenchGuest.readyMarker) else {
            throw BenchError("\(name): no workload start line; see \(paths.consoleLog)")
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
                if ContinuousClock.now > deadline { throw BenchError("\(name): timed out waiting for \(what); see \(paths.consoleLog)") }
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
                    // A job that ends before its checkpoint does would end
                    // so on every attempt: the job is too short, not the guest lost.
                    if ConsoleProgress.firstLine(paths.consoleLog, startingWith: "cevm-job complete") != nil {
                        throw BenchError(
                            "\(name): the job ended during its checkpoint at unit \(Int(reached)) of \(units); "
                                + "give it more --units (or --job-seconds): \(output.stderr)")
                    }
                    if !(paths.readStatus()?.state.isLive ?? false) {
                        throw GuestLost(reason: "cevm checkpoint \(output.status): \(output.stderr)", console: ConsoleProgress.tail(paths.consoleLog))
                    }
                    throw BenchError("cevm \(arguments.joined(separator: " ")) \(output.status): \(output.stderr)")
                }
                do {
                    manifests.append((reached, try JSONDecoder().decode(CheckpointOutput.self, from: Data(output.stdout.utf8))))
                } catch {
                    throw BenchError("cevm checkpoint --json printed something unexpected (\(error)): \(output.stdout.prefix(400))")
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
            let host = t.cost
            // The guest's loss over the host's window, at its rate in the
            // estimate's baseline (the 2 s before the request).
            var sameWindow: Double?
            if let w = host?.windowMs.map({ $0 / 1000 }), w > 0,
                let before = ConsoleProgress.rate(from: window.start - 2, to: window.start, in: ticks), before > 0,
                let a = ConsoleProgress.counter(at: window.start, in: ticks, pause: window.pause),
                let b = ConsoleProgress.counter(at: window.start + w, in: ticks, pause: window.pause)
            {
                sameWindow = w - (b - a) / before
            }
            out.append(
                .init(
                    atUnits: entry.units, guestPause: pause, timeToDurable: t.requestToDurableMs / 1000, overlap: overlap,
                    progressDuringOverlap: clamped, progressUnclamped: progress,
                    cost: pause + overlap * (1 - (clamped ?? 1)), hostLost: host?.lostMs.map { $0 / 1000 },
                    hostWindow: host?.windowMs.map { $0 / 1000 },
                    hostNote: host == nil ? "the record has no host estimate" : host?.unavailable,
                    guestSameWindow: sameWindow, record: entry.output.directory))
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
