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
import VMStore

// MARK: - Report

struct CheckpointBenchReport: BenchReport {
    struct Row: Encodable {
        var memoryMiB: Int
        var mechanism: String
        /// 1…repeats: the checkpoint's place among those of its mechanism on this guest.
        var repetition = 1
        /// Units per host second over `baselineSeconds` just before the request.
        var undisturbedRate: Double
        /// What the guest rewrote per second then: undisturbedRate × cevm.pages × 4 KiB.
        var undisturbedDirtyMiBps: Double
        var baselineSeconds: Double
        /// Units per host second from the request to the record being durable
        /// (nil when the guest printed nothing after the window: it was lost).
        var checkpointRate: Double?
        /// checkpointRate / undisturbedRate.
        var progress: Double?
        /// Progress from the request to the pause (CEVM: the pre-copy) and from
        /// the guest running again to the record being durable (the overlap);
        /// nil for a phase shorter than 100 ms.
        var progressBeforePause: Double?
        var progressAfterResume: Double?
        /// The guest died or hung after this checkpoint.
        var guestLost: Bool
        /// Guests lost by earlier attempts at this row (each on a new guest).
        var guestsLostBefore: Int
        /// Why the guest counts as lost.
        var failure: String?
        /// Why the earlier attempts' guests were lost.
        var earlierFailures: [String] = []
        var guestPauseMs: Double
        var requestToPauseMs: Double
        var requestToDurableMs: Double
        var consoleGapMs: Double?
        var overlapMs: Double?
        var migrationDowntimeMs: Double?
        var migrationTotalMs: Double?
        /// CEVM: guestPauseMs - migrationDowntimeMs.
        var pauseOverDowntimeMs: Double?
        var recordBytes: Int64
        var memoryStreamBytes: Int64
        var record: String
        /// `--formats`: the record format asked for, and `first` (full) or
        /// `second` (a few seconds later; incremental in format 2).
        var recordFormat: Int?
        var checkpoint: String?
        /// The record's memory files (role `memory` in its manifest).
        var memoryBytes: Int64?
        /// Format 2: `full` or `incremental`, and the pages its image stores (data + zero).
        var memoryKind: String?
        var storedPages: Int?
        /// The job's units done at the pause (interpolated from the console).
        var unitsAtPause: Double?
        /// Second checkpoints: the pages the guest wrote between the two
        /// pauses, by its own count (its page choice replayed).
        var guestWrittenPages: Int?
        /// The manifest's phases memoryDurable − switchOver (CEVM: its
        /// stream ends at the switch-over) or − snapshotCompleted
        /// (stop-and-save, background snapshot: QEMU's stream ended): what
        /// the record took once QEMU had sent everything.
        var memoryDurableAfterSwitchMs: Double?
        /// utime + stime of the VM's supervisor over the `cevm checkpoint` command.
        var supervisorCPUms: Double?
        /// Bytes per second of a write + fdatasync of the pair's first
        /// record's memory size in the records directory, just after the pair.
        var writeBytesPerSecond: Double?
    }

    /// One restore of a record, or QEMU alone loading a record's stream.
    struct RestoreRow: Encodable {
        var memoryMiB: Int
        var mechanism: String
        var what: String
        var record: String
        var recordMemoryBytes: Int64
        var seconds: Double?
        var failure: String?
    }

    typealias Target = BenchTarget

    var cpus: Int
    var qemu: String
    var guest: String
    var policy: String
    var downtimeLimitMs: Int?
    var repeats: Int
    var rows: [Row]
    /// CEVM against QEMU's own live migration of the same guests (medians).
    var references: [String] = []
    var restores: [RestoreRow] = []
    var targets: [Target]

    func text() -> String {
        var out = [
            "cevm bench checkpoint: \(cpus) CPUs, QEMU \(qemu), TCG; guest \(guest); CEVM policy \(policy), downtime limit "
                + (downtimeLimitMs.map { "\($0) ms" } ?? "cevm's default") + (repeats > 1 ? "; \(repeats) checkpoints per mechanism, targets on the medians" : ""),
            "progress = guest units per host second from the request to the record being durable, relative to the "
                + (rows.first.map { String(format: "%.0f", $0.baselineSeconds) } ?? "?") + " s just before it",
            "",
        ]
        var grid = [[
            "RAM", "mechanism", "#", "pause", "downtime", "pause-downtime", "console gap", "to durable", "bytes", "dirtied",
            "rate before", "rate during", "progress", "(pre-pause", "post-resume)", "lost",
        ]]
        func msText(_ value: Double?) -> String { value.map { String(format: "%.1f ms", $0) } ?? "-" }
        for row in rows {
            grid.append([
                row.memoryMiB >= 1024 && row.memoryMiB % 1024 == 0 ? "\(row.memoryMiB >> 10) GiB" : "\(row.memoryMiB) MiB",
                row.mechanism, "\(row.repetition)", msText(row.guestPauseMs),
                msText(row.mechanism == Mechanism.stopAndSave.rawValue ? nil : row.migrationDowntimeMs), msText(row.pauseOverDowntimeMs),
                msText(row.consoleGapMs), msText(row.requestToDurableMs), formatBytes(row.recordBytes),
                String(format: "%.0f MiB/s", row.undisturbedDirtyMiBps),
                String(format: "%.1f/s", row.undisturbedRate), row.checkpointRate.map { String(format: "%.1f/s", $0) } ?? "-",
                row.guestLost ? "guest lost" : row.progress.map { String(format: "%.1f %%", $0 * 100) } ?? "-",
                row.progressBeforePause.map { String(format: "%.0f %%", $0 * 100) } ?? "-",
                row.progressAfterResume.map { String(format: "%.0f %%", $0 * 100) } ?? "-",
                row.guestsLostBefore > 0 ? "\(row.guestsLostBefore)" : "",
            ])
        }
        out.append(table(grid))
        if rows.contains(where: { $0.mechanism == CheckpointBenchRunner.liveMigrationLabel }) {
            out.append(
                "(\(CheckpointBenchRunner.liveMigrationLabel): its window runs from `migrate` to the destination's RESUME; no record is written)")
        }
        let formatRows = rows.filter { $0.recordFormat != nil }
        if !formatRows.isEmpty {
            out.append("")
            out.append(
                "Record formats: memory = the record's memory files; changed = pages the guest wrote since the first checkpoint "
                    + "(its own count) × 4 KiB; durable after the stream = phases memoryDurable − the end of QEMU's stream "
                    + "(CEVM: switchOver; stop-and-save and background snapshot: snapshotCompleted); bound = 1.2 × memory / write "
                    + "bandwidth; CPU = the supervisor's utime + stime over the command")
            var formats = [[
                "RAM", "mechanism", "#", "format", "checkpoint", "memory", "memory/RAM", "stored pages", "changed", "to durable",
                "durable after the stream", "write MB/s", "bound", "supervisor CPU", "progress",
            ]]
            for row in formatRows {
                let ram = Double(row.memoryMiB) * 1_048_576
                let after = row.memoryDurableAfterSwitchMs ?? row.requestToDurableMs
                let bound = row.writeBytesPerSecond.flatMap { bw in row.memoryBytes.map { 1.2 * Double($0) / bw * 1000 } }
                formats.append([
                    row.memoryMiB >= 1024 && row.memoryMiB % 1024 == 0 ? "\(row.memoryMiB >> 10) GiB" : "\(row.memoryMiB) MiB",
                    row.mechanism, "\(row.repetition)", row.recordFormat.map { "\($0)" } ?? "-",
                    (row.checkpoint ?? "-") + (row.memoryKind.map { " (\($0))" } ?? ""),
                    row.memoryBytes.map(formatBytes) ?? "-",
                    row.memoryBytes.map { String(format: "%.2f", Double($0) / ram) } ?? "-",
                    row.storedPages.map { "\($0)" } ?? "-",
                    row.guestWrittenPages.map { formatBytes(Int64($0) * 4096) } ?? "-",
                    msText(row.requestToDurableMs), msText(after),
                    row.writeBytesPerSecond.map { String(format: "%.0f", $0 / 1e6) } ?? "-", msText(bound),
                    msText(row.supervisorCPUms),
                    row.guestLost ? "guest lost" : row.progress.map { String(format: "%.1f %%", $0 * 100) } ?? "-",
                ])
            }
            out.append(table(formats))
        }
        if !restores.isEmpty {
            out.append("")
            out.append(
                "Restores (cevm restore: from the command to the VM running, the record's files and every page verified first; "
                    + "QEMU alone: migrate-incoming of the format 1 stream from its file to `completed`)")
            var grid = [["RAM", "mechanism", "what", "record memory", "seconds"]]
            for r in restores {
                grid.append([
                    "\(r.memoryMiB) MiB", r.mechanism, r.what, formatBytes(r.recordMemoryBytes),
                    r.seconds.map { String(format: "%.2f s", $0) } ?? "failed: \(r.failure ?? "?")",
                ])
            }
            out.append(table(grid))
        }
        if !references.isEmpty {
            out.append("")
            out.append("CEVM against QEMU's own live migration (medians)")
            out += references.map { "  " + $0 }
        }
        let failed = rows.filter { $0.guestLost || !$0.earlierFailures.isEmpty }
        if !failed.isEmpty {
            out.append("")
            out.append("Guests lost (each attempt after a loss runs on a new guest, booted and measured afresh)")
            for row in failed {
                for (index, failure) in (row.earlierFailures + (row.guestLost ? [row.failure ?? "guest lost"] : [])).enumerated() {
                    out.append("  \(row.memoryMiB) MiB \(row.mechanism), attempt \(index + 1): \(failure)")
                }
            }
        }
        out += BenchTarget.lines(targets)
        return out.joined(separator: "\n")
    }
}

// MARK: - The runner

public final class CheckpointBenchRunner: BenchDriver {
    let home: String
    let sizes: [Int]
    let mechanisms: [Mechanism]
    let policy: AffinityPolicy
    let workingSet: Int?
    let pages: Int
    let verify: Int
    let tick: Int
    let baseline: Double
    let attempts: Int
    let repeats: Int
    let downtimeLimit: Int?
    let control: Bool
    /// Record formats measured against each other (empty: one checkpoint
    /// per repetition, in cevm's default format).
    let formats: [Int]
    /// Seconds from a pair's first checkpoint (durable) to its second's request.
    let gap: Double
    /// The RAM size whose records are restored (nil: no restores).
    let restoreMiB: Int?
    /// QEMU instances the control started directly (no cevm VM of theirs).
    let bare = Mutex<[QEMUInstance]>([])
    /// The bundled guest as `cevm run` makes it (with its disk), or its
    /// kernel and initrd alone (no disk).
    let withDisk: Bool
    let kernel: String
    let initrd: String
    let defaultAppend: String
    let stop: AsyncSignal
    let started = Mutex<[String]>([])

    /// Far more units than any run does: the job never ends by itself.
    static let jobUnits = "1000000000000"

    public init(
        home: String, sizes: [Int], mechanisms: [Mechanism], policy: AffinityPolicy, workingSet: Int?, pages: Int, verify: Int, tick: Int,
        baseline: Double, attempts: Int, repeats: Int, downtimeLimit: Int?, control: Bool, withDisk: Bool, guest: BenchGuest,
        defaultAppend: String, stop: AsyncSignal, formats: [Int] = [], gap: Double = 4, restoreMiB: Int? = nil
    ) {
        self.formats = formats
        self.gap = gap
        self.restoreMiB = restoreMiB
        self.control = control
        self.repeats = repeats
        self.downtimeLimit = downtimeLimit
        self.home = home
        self.sizes = sizes
        self.mechanisms = mechanisms
        self.policy = policy
        self.workingSet = workingSet
        self.pages = pages
        self.verify = verify
        self.tick = tick
        self.baseline = baseline
        self.attempts = attempts
        self.withDisk = withDisk
        self.kernel = guest.kernel
        self.initrd = guest.initrd
        self.defaultAppend = defaultAppend
        self.stop = stop
    }

    /// Measures every size and mechanism, then prints the report (JSON or a
    /// table) on stdout, having stopped every VM and removed the CEVM_HOME.
    public func runAndReport(keep: Bool, json: Bool) async throws {
        try await measureAndReport(keep: keep, json: json) { try await run() }
    }

    func workingSet(forRAM mib: Int) -> Int { workingSet ?? max(16, mib / 2 - 64) }

    func append(forRAM mib: Int) -> String {
        "cevm.mem=\(workingSet(forRAM: mib)) cevm.pages=\(pages) cevm.disk=0 cevm.tick=\(tick) cevm.verify=\(verify) cevm.job=\(Self.jobUnits)"
    }

    /// A booted guest of one RAM size.
    struct Guest {
        var name: String
        var console: String
    }

    /// Boots a new guest (`bench<MiB>`, then `bench<MiB>-2`, … when one was lost)
    /// and waits until its job makes steady progress.
    func boot(mib: Int, generation: Int) async throws -> Guest {
        let name = generation == 1 ? "bench\(mib)" : "bench\(mib)-\(generation)"
        let console = Home(root: home).vm(try VMName(name)).consoleLog
        BenchOutput.progress("\(mib) MiB: booting \(name)…")
        started.withLock { $0.append(name) }
        var arguments = ["run", name, "--accel", "tcg", "--memory", "\(mib)M"]
        if withDisk {
            arguments += ["--append", append(forRAM: mib)]
        } else {
            // Kernel and initrd given explicitly: `cevm run` adds no disk.
            arguments += ["--kernel", kernel, "--initrd", initrd, "--append", defaultAppend + " " + append(forRAM: mib)]
        }
        _ = try await cevmChecked(arguments, timeout: .seconds(300))
        try await waitForSteadyProgress(console, mib: mib)
        return Guest(name: name, console: console)
    }

    func retire(_ guest: Guest) async {
        _ = try? await cevm(["stop", guest.name], timeout: .seconds(120))
        started.withLock { $0.removeAll { $0 == guest.name } }
    }

    func run() async throws -> CheckpointBenchReport {
        let qemu = await BenchTools.qemuVersion()
        var rows: [CheckpointBenchReport.Row] = []
        for mib in sizes {
            var generation = 0
            for mechanism in mechanisms {
                // Each mechanism on a guest of its own: a background snapshot
                // leaves the guest slower for a while (userfaultfd write
                // protection splits QEMU's huge pages), and a CEVM checkpoint
                // leaves New_VM pinned; neither may color the next baseline.
                generation += 1
                var guest = try await boot(mib: mib, generation: generation)
                for repetition in 1...repeats {
                    var lost = 0
                    var failures: [String] = []
                    while true {
                        try checkStop()
                        var batch = try await measureBatch(mechanism, guest: guest, mib: mib)
                        for index in batch.indices {
                            batch[index].repetition = repetition
                            batch[index].guestsLostBefore = lost
                            batch[index].earlierFailures = failures
                        }
                        guard let row = batch.first(where: \.guestLost) else {
                            rows += batch
                            break
                        }
                        // The guest died or stopped making progress after the
                        // checkpoint: say so, and measure again on a new guest.
                        lost += 1
                        failures.append(row.failure ?? "guest lost")
                        await retire(guest)
                        generation += 1
                        let last = lost >= attempts
                        if last { rows.append(row) }
                        if !last || repetition < repeats {
                            guest = try await boot(mib: mib, generation: generation)
                        }
                        if last { break }
                    }
                }
                BenchOutput.progress("\(mib) MiB: \(mechanism.rawValue): stopping…")
                await retire(guest)
            }
            if control { rows += try await measureLiveMigrations(mib: mib) }
        }
        let restores = try await measureRestores(rows)
        return CheckpointBenchReport(
            cpus: ProcessInfo.processInfo.activeProcessorCount, qemu: qemu,
            guest: (withDisk ? "bundled with its disk" : "bundled kernel and initrd, no disk") + ", job mode: "
                + append(forRAM: 0).replacingOccurrences(of: "cevm.mem=16", with: "cevm.mem=RAM/2-64"),
            policy: policy.rawValue, downtimeLimitMs: downtimeLimit, repeats: repeats, rows: rows,
            references: references(rows), restores: restores, targets: targets(rows) + formatTargets(rows))
    }

    /// Stops every VM this run started (best effort).
    func cleanUp() async {
        for name in started.withLock({ $0 }) {
            _ = try? await cevm(["stop", name], timeout: .seconds(120))
        }
        started.withLock { $0 = [] }
        for instance in bare.withLock({ list in defer { list.removeAll() }; return list }) {
            await instance.stop(grace: .seconds(2))
        }
    }

    /// Waits for the job's first lines, then for a few seconds of steady progress.
    func waitForSteadyProgress(_ console: String, mib: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(300)
        while true {
            try checkStop()
            let ticks = ConsoleProgress.ticks(console)
            if let first = ticks.first, let last = ticks.last, last.time - first.time >= 3 { return }
            if ContinuousClock.now > deadline {
                throw BenchError("\(mib) MiB guest: no steady progress after 300 s; see \(console)")
            }
            BenchOutput.progress("\(mib) MiB: waiting for the guest's job (\(ticks.count) progress lines)…")
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    struct CheckpointOutput: Decodable {
        var directory: String
        var manifest: RecordManifest
    }

    /// One repetition: a checkpoint, or with `formats` a pair per format
    /// (first full, then `gap` seconds later a second one).
    func measureBatch(_ mechanism: Mechanism, guest: Guest, mib: Int) async throws -> [CheckpointBenchReport.Row] {
        guard !formats.isEmpty else { return [try await measure(mechanism, guest: guest, mib: mib)] }
        var batch: [CheckpointBenchReport.Row] = []
        for format in formats {
            var first = try await measure(mechanism, guest: guest, mib: mib, format: format, full: true)
            first.checkpoint = "first"
            guard !first.guestLost else { return batch + [first] }
            var second = try await measure(
                mechanism, guest: guest, mib: mib, format: format, full: false, settle: 0, baselineSeconds: gap)
            second.checkpoint = "second"
            if let from = first.unitsAtPause, let to = second.unitsAtPause {
                second.guestWrittenPages = pagesWritten(from: Int(from.rounded()), to: Int(to.rounded()), workingSetMiB: workingSet(forRAM: mib))
            }
            if !second.guestLost, let bytes = first.memoryBytes {
                BenchOutput.progress("\(mib) MiB: \(mechanism.rawValue): write bandwidth…")
                let records = Home(root: home).vm(try VMName(guest.name)).directory + "/records"
                let bandwidth = try Self.writeBandwidth(directory: records, bytes: bytes)
                first.writeBytesPerSecond = bandwidth
                second.writeBytesPerSecond = bandwidth
            }
            batch += [first, second]
            if second.guestLost { return batch }
        }
        return batch
    }

    func measure(
        _ mechanism: Mechanism, guest: Guest, mib: Int, format: Int? = nil, full: Bool = false, settle: Double = CheckpointBenchRunner.settle,
        baselineSeconds: Double? = nil
    ) async throws -> CheckpointBenchReport.Row {
        let console = guest.console
        let baseline = baselineSeconds ?? self.baseline
        // Let the previous checkpoint's aftermath (old instance ending, page
        // cache writeback of its record) pass before measuring.
        BenchOutput.progress("\(mib) MiB: \(mechanism.rawValue): settling…")
        try await pause(settle)
        BenchOutput.progress("\(mib) MiB: \(mechanism.rawValue): \(String(format: "%.0f", baseline)) s undisturbed…")
        let baselineStart = Timestamp.wallSeconds()
        try await pause(baseline)
        var arguments = ["checkpoint", guest.name, "--mechanism", mechanism.rawValue, "--json"]
        if let format { arguments += ["--record-format", "\(format)"] }
        if full { arguments += ["--full"] }
        if mechanism == .cevm {
            arguments += ["--policy", policy.rawValue]
            if let downtimeLimit { arguments += ["--downtime-limit", "\(downtimeLimit)"] }
        }
        BenchOutput.progress("\(mib) MiB: \(mechanism.rawValue): checkpoint…")
        let requested = Timestamp.wallSeconds()
        let records = Home(root: home).vm(try VMName(guest.name)).directory + "/records"
        let known = Set((try? Files.list(records)) ?? [])
        let watchdog = Task { [self] in await self.watchStream(records: records, known: known, mib: mib, guest: guest.name) }
        let supervisor = supervisorPID(guest.name)
        let cpuBefore = supervisor.flatMap(Self.cpuSeconds)
        let result = try await cevm(arguments)
        let cpuAfter = supervisor.flatMap(Self.cpuSeconds)
        watchdog.cancel()
        let returned = Timestamp.wallSeconds()
        if let runaway = await watchdog.value {
            let message = "migration did not converge: the memory stream passed \(formatBytes(runaway)) (the VM was stopped)"
            StandardError.write("cevm: \(mib) MiB \(mechanism.rawValue): \(message)\n")
            return lostRow(mib: mib, mechanism: mechanism, console: console, baselineStart: baselineStart, requested: requested, failure: message, format: format)
        }
        guard result.status.succeeded else {
            // A guest that died during the checkpoint takes its instance (and
            // the checkpoint) with it: count it as lost, like one that dies after.
            let message = "cevm checkpoint \(result.status): \(result.stderr)"
            StandardError.write("cevm: \(mib) MiB \(mechanism.rawValue): \(message); console tail:\n\(ConsoleProgress.tail(console))\n")
            return lostRow(mib: mib, mechanism: mechanism, console: console, baselineStart: baselineStart, requested: requested, failure: message, format: format)
        }
        let stdout = result.stdout
        let output: CheckpointOutput
        do { output = try JSONDecoder().decode(CheckpointOutput.self, from: Data(stdout.utf8)) } catch {
            throw BenchError("cevm checkpoint --json printed something unexpected (\(error)): \(stdout.prefix(400))")
        }
        let manifest = output.manifest
        let timings = manifest.timings
        // The request as the supervisor saw it, on the console's clock (both are this host's UTC).
        var start = requested, end = returned
        if let pausedAt = Timestamp.parse(timings.pausedAt) {
            start = pausedAt - timings.requestToPauseMs / 1000
            end = start + timings.requestToDurableMs / 1000
        }
        let baselineEnd = min(requested, start)
        let ticks = try await ticks(in: console, through: end)
        guard let before = ConsoleProgress.rate(from: baselineStart, to: baselineEnd, in: ticks) else {
            throw BenchError("\(mib) MiB: no progress lines around the undisturbed window; see \(console)")
        }
        var pause: (Double, Double)?
        if let from = Timestamp.parse(timings.pausedAt), let to = Timestamp.parse(timings.resumedAt), to > from { pause = (from, to) }
        let during = ConsoleProgress.rate(from: start, to: end, in: ticks, pause: pause)
        var beforePause: Double?, afterResume: Double?
        if let (from, to) = pause, before > 0 {
            if from - start >= 0.1 { beforePause = ConsoleProgress.rate(from: start, to: from, in: ticks, pause: pause).map { $0 / before } }
            if end - to >= 0.1 { afterResume = ConsoleProgress.rate(from: to, to: end, in: ticks, pause: pause).map { $0 / before } }
        }
        let lost = during == nil
        if lost {
            let tail = ConsoleProgress.tail(console)
            StandardError.write(
                "cevm: \(mib) MiB \(mechanism.rawValue): the guest printed no progress for \(Self.lostAfter) s after the checkpoint; console tail:\n\(tail)\n")
        }
        let downtime = manifest.migration.downtimeMs
        var unitsAtPause: Double?
        if let (from, _) = pause { unitsAtPause = ConsoleProgress.counter(at: from, in: ticks, pause: nil) }
        var afterSwitch: Double?
        if let phases = timings.phases, let durable = phases["memoryDurable"],
            let streamEnd = phases["switchOver"] ?? phases["snapshotCompleted"]
        {
            afterSwitch = durable - streamEnd
        }
        var cpu: Double?
        if let cpuBefore, let cpuAfter { cpu = (cpuAfter - cpuBefore) * 1000 }
        return CheckpointBenchReport.Row(
            memoryMiB: mib, mechanism: mechanism.rawValue, undisturbedRate: before,
            undisturbedDirtyMiBps: before * Double(pages) / 256, baselineSeconds: baselineEnd - baselineStart,
            checkpointRate: during, progress: during.map { before > 0 ? $0 / before : 0 },
            progressBeforePause: beforePause, progressAfterResume: afterResume, guestLost: lost, guestsLostBefore: 0,
            failure: lost ? "no progress line within \(Self.lostAfter) s after the checkpoint" : nil,
            guestPauseMs: timings.guestPauseMs, requestToPauseMs: timings.requestToPauseMs,
            requestToDurableMs: timings.requestToDurableMs, consoleGapMs: timings.consoleGapMs, overlapMs: timings.overlapMs,
            migrationDowntimeMs: downtime, migrationTotalMs: manifest.migration.totalTimeMs,
            pauseOverDowntimeMs: mechanism == .cevm ? downtime.map { timings.guestPauseMs - $0 } : nil,
            recordBytes: manifest.files.reduce(0) { $0 + $1.size },
            memoryStreamBytes: manifest.migration.streamBytes, record: output.directory, recordFormat: format,
            memoryBytes: manifest.files.filter { $0.role == .memory }.reduce(0) { $0 + $1.size },
            memoryKind: manifest.memory?.kind.rawValue, storedPages: manifest.memory.map { $0.dataPages + $0.zeroPages },
            unitsAtPause: unitsAtPause, memoryDurableAfterSwitchMs: afterSwitch, supervisorCPUms: cpu)
    }

    /// The progress lines of `console` once one has come after `end` (a
    /// window's end needs lines after it), or after `lostAfter` seconds
    /// without: the guest died or hung.
    func ticks(in console: String, through end: Double) async throws -> [ConsoleProgress.Tick] {
        let deadline = ContinuousClock.now + .seconds(Self.lostAfter)
        var ticks = ConsoleProgress.ticks(console)
        while (ticks.last?.time ?? 0) < end + 0.5 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            ticks = ConsoleProgress.ticks(console)
        }
        return ticks
    }

    /// A row for a checkpoint that failed or lost its guest before a manifest.
    func lostRow(
        mib: Int, mechanism: Mechanism, console: String, baselineStart: Double, requested: Double, failure: String, format: Int? = nil
    ) -> CheckpointBenchReport.Row {
        let ticks = ConsoleProgress.ticks(console)
        return CheckpointBenchReport.Row(
            memoryMiB: mib, mechanism: mechanism.rawValue,
            undisturbedRate: ConsoleProgress.rate(from: baselineStart, to: requested, in: ticks) ?? 0,
            undisturbedDirtyMiBps: (ConsoleProgress.rate(from: baselineStart, to: requested, in: ticks) ?? 0) * Double(pages) / 256,
            baselineSeconds: requested - baselineStart, checkpointRate: nil, progress: nil, progressBeforePause: nil,
            progressAfterResume: nil, guestLost: true,
            guestsLostBefore: 0, failure: failure, guestPauseMs: 0, requestToPauseMs: 0, requestToDurableMs: 0,
            consoleGapMs: nil, overlapMs: nil, migrationDowntimeMs: nil, migrationTotalMs: nil, pauseOverDowntimeMs: nil,
            recordBytes: 0, memoryStreamBytes: 0, record: "", recordFormat: format)
    }

    /// A live migration that never converges streams (and cevm spools) the
    /// working set again and again until the disk is full. While a
    /// checkpoint runs, this watches the new record's memory stream; past
    /// `streamLimit(mib)` it stops the VM (ending the checkpoint) and returns
    /// the size seen. Nil when the checkpoint ended first (cancelled).
    func watchStream(records: String, known: Set<String>, mib: Int, guest: String) async -> Int64? {
        let limit = Self.streamLimit(mib)
        while !Task.isCancelled {
            for entry in (try? Files.list(records)) ?? [] where !known.contains(entry) {
                if let size = try? Files.size("\(records)/\(entry)/memory.mig"), size > limit {
                    _ = try? await cevm(["stop", guest], timeout: .seconds(120))
                    return size
                }
            }
            try? await Task.sleep(for: .milliseconds(250))
        }
        return nil
    }

    /// Four times the RAM, plus 256 MiB of slack for device state and headers.
    static func streamLimit(_ mib: Int) -> Int64 { (Int64(mib) << 22) + (256 << 20) }

    /// Seconds waited before each undisturbed window.
    static let settle = 3.0

    /// Seconds without a progress line after a checkpoint that count as a lost guest.
    static let lostAfter = 20

    // MARK: Targets

    /// The median, nil for no values.
    static func median(_ values: [Double]) -> Double? { values.isEmpty ? nil : Spread(values).median }

    /// Per RAM size: CEVM's progress before its pause and over its whole
    /// window, against the control's over the migration alone, and the pauses.
    func references(_ rows: [CheckpointBenchReport.Row]) -> [String] {
        func percent(_ value: Double?) -> String { value.map { String(format: "%.1f %%", $0 * 100) } ?? "-" }
        func ms(_ value: Double?) -> String { value.map { String(format: "%.0f ms", $0) } ?? "-" }
        return sizes.compactMap { mib in
            let cevm = rows.filter { $0.memoryMiB == mib && $0.mechanism == Mechanism.cevm.rawValue && !$0.guestLost }
            let alone = rows.filter { $0.memoryMiB == mib && $0.mechanism == Self.liveMigrationLabel && !$0.guestLost }
            guard !cevm.isEmpty, !alone.isEmpty else { return nil }
            return "\(mib) MiB: pre-copy progress CEVM \(percent(Self.median(cevm.compactMap(\.progressBeforePause)))), "
                + "QEMU alone \(percent(Self.median(alone.compactMap(\.progressBeforePause)))); "
                + "whole window CEVM \(percent(Self.median(cevm.compactMap(\.progress)))) (to durable), "
                + "QEMU alone \(percent(Self.median(alone.compactMap(\.progress)))) (to resume); "
                + "pause CEVM \(ms(Self.median(cevm.map(\.guestPauseMs)))), QEMU alone \(ms(Self.median(alone.map(\.guestPauseMs)))); "
                + "migration CEVM \(ms(Self.median(cevm.compactMap(\.migrationTotalMs)))), QEMU alone \(ms(Self.median(alone.compactMap(\.migrationTotalMs))))"
        }
    }

    /// Record format 2 against format 1 (issue targets, never asserted):
    /// per RAM size and mechanism, on the medians of the repetitions.
    func formatTargets(_ rows: [CheckpointBenchReport.Row]) -> [CheckpointBenchReport.Target] {
        var targets: [CheckpointBenchReport.Target] = []
        func median(_ values: [Double]) -> Double? { Self.median(values) }
        func percent(_ value: Double) -> String { String(format: "%.1f %%", value * 100) }
        for mib in sizes {
            let ram = Int64(mib) << 20
            for mechanism in mechanisms {
                let group = rows.filter { $0.memoryMiB == mib && $0.mechanism == mechanism.rawValue && $0.recordFormat != nil && !$0.guestLost }
                guard !group.isEmpty else { continue }
                let label = "\(mib) MiB \(mechanism.rawValue)"
                let fulls = group.filter { $0.recordFormat == 2 && $0.checkpoint == "first" }.compactMap(\.memoryBytes)
                if let largest = fulls.max() {
                    targets.append(.init(
                        name: "\(label): format 2 full memory ≤ RAM (largest)", value: formatBytes(largest),
                        required: "≤ \(formatBytes(ram))", met: largest <= ram))
                }
                let increments = group.filter { $0.recordFormat == 2 && $0.checkpoint == "second" }
                let ratios = increments.compactMap { row in
                    row.guestWrittenPages.flatMap { pages in row.memoryBytes.map { Double($0) / (Double(pages) * 4096) } }
                }
                if let ratio = median(ratios) {
                    let sample = increments.first { $0.guestWrittenPages != nil }
                    targets.append(.init(
                        name: "\(label): format 2 incremental ≤ 1.1 × pages the guest changed (median ratio)",
                        value: String(format: "%.2f ×", ratio) + " (e.g. " + (sample?.memoryBytes.map(formatBytes) ?? "-") + " for "
                            + (sample?.guestWrittenPages.map { formatBytes(Int64($0) * 4096) } ?? "-") + ")",
                        required: "≤ 1.10 ×", met: ratio <= 1.1))
                }
                for format in [2, 1] {
                    let durable = group.filter { $0.recordFormat == format }.compactMap { row -> Double? in
                        let after = row.memoryDurableAfterSwitchMs ?? row.requestToDurableMs
                        guard let bytes = row.memoryBytes, let bandwidth = row.writeBytesPerSecond, bandwidth > 0 else { return nil }
                        return after / (1.2 * Double(bytes) / bandwidth * 1000)
                    }
                    if let ratio = median(durable) {
                        targets.append(.init(
                            name: "\(label): format \(format) time to durable "
                                + (mechanism == .cevm ? "after switch-over" : "after QEMU's stream") + " ≤ 1.2 × memory / write bandwidth (median)",
                            value: String(format: "%.2f × the bound", ratio), required: "≤ 1.00 ×", met: ratio <= 1))
                    }
                }
                for kind in ["first", "second"] {
                    let two = median(group.filter { $0.recordFormat == 2 && $0.checkpoint == kind }.compactMap(\.progress))
                    let one = median(group.filter { $0.recordFormat == 1 && $0.checkpoint == kind }.compactMap(\.progress))
                    if let two, let one {
                        targets.append(.init(
                            name: "\(label): \(kind) checkpoints, format 2 progress not worse than format 1 (medians)",
                            value: "\(percent(two)) vs \(percent(one))", required: "≥ format 1 − 3 points (noise)",
                            met: two >= one - 0.03))
                    }
                }
            }
        }
        return targets
    }

    /// The issue's targets, evaluated on the rows (never asserted).
    func targets(_ rows: [CheckpointBenchReport.Row]) -> [CheckpointBenchReport.Target] {
        var targets: [CheckpointBenchReport.Target] = []
        let cevmRows = rows.filter { $0.mechanism == Mechanism.cevm.rawValue }
        let many = repeats > 1
        func median(_ values: [Double]) -> Double { Self.median(values) ?? 0 }
        func percent(_ value: Double) -> String { String(format: "%.1f %%", value * 100) }
        var pauses: [(mib: Int, pause: Double)] = []
        for mib in sizes {
            let group = cevmRows.filter { $0.memoryMiB == mib }
            guard !group.isEmpty else { continue }
            let measured = group.filter { !$0.guestLost }
            // Every checkpoint, not the median: what CEVM adds to QEMU's downtime.
            if let worst = measured.filter({ $0.pauseOverDowntimeMs != nil }).max(by: { ($0.pauseOverDowntimeMs ?? 0) < ($1.pauseOverDowntimeMs ?? 0) }),
                let over = worst.pauseOverDowntimeMs, let downtime = worst.migrationDowntimeMs
            {
                targets.append(.init(
                    name: "\(mib) MiB: CEVM pause ≤ migration downtime + 10 ms" + (many ? " (every checkpoint)" : ""),
                    value: String(format: "%.1f ms (downtime %.1f ms)", worst.guestPauseMs, downtime),
                    required: String(format: "≤ %.1f ms", downtime + 10), met: over <= 10))
            }
            // A lost guest counts as no progress.
            let progress = median(group.map { $0.guestLost ? 0 : $0.progress ?? 0 })
            targets.append(.init(
                name: "\(mib) MiB: CEVM guest progress during the checkpoint" + (many ? " (median)" : ""),
                value: percent(progress) + (many ? " (" + group.map { $0.guestLost ? "lost" : percent($0.progress ?? 0) }.joined(separator: ", ") + ")" : ""),
                required: "≥ 95 %", met: progress >= 0.95))
            let snapshots = rows.filter { $0.memoryMiB == mib && $0.mechanism == Mechanism.backgroundSnapshot.rawValue }
            if !snapshots.isEmpty {
                let other = median(snapshots.map { $0.guestLost ? 0 : $0.progress ?? 0 })
                targets.append(.init(
                    name: "\(mib) MiB: CEVM progress better than background-snapshot" + (many ? " (medians)" : ""),
                    value: "\(percent(progress)) vs \(percent(other))", required: "CEVM > background-snapshot", met: progress > other))
            }
            let lost = group.reduce(0) { $0 + $1.guestsLostBefore + ($1.guestLost ? 1 : 0) }
            if lost > 0 {
                targets.append(.init(
                    name: "\(mib) MiB: guest alive after every CEVM checkpoint",
                    value: "\(lost) guest(s) lost", required: "none lost", met: false))
            }
            if !measured.isEmpty { pauses.append((mib, median(measured.map(\.guestPauseMs)))) }
        }
        if pauses.count >= 2, let low = pauses.map(\.pause).min(), let high = pauses.map(\.pause).max() {
            // "Flat": the largest pause is within 1.5x the smallest (plus 10 ms of slack).
            targets.append(.init(
                name: "CEVM pause flat across RAM sizes" + (many ? " (medians)" : ""),
                value: pauses.map { String(format: "%.0f", $0.pause) }.joined(separator: " / ") + " ms",
                required: String(format: "max ≤ 1.5 × min + 10 ms = %.0f ms", low * 1.5 + 10), met: high <= low * 1.5 + 10))
        }
        return targets
    }
}
