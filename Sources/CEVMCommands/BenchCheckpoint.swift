import ArgumentParser
import CEVMBench
import Control
import Records
import Supervisor

/// `cevm bench checkpoint`: every checkpoint mechanism on the same
/// write-heavy guests, one per RAM size, driven through the cevm binary
/// itself as a user would (`cevm run`, `cevm checkpoint --json`, `cevm
/// stop`) in a private `$CEVM_HOME`. The guest is the bundled one in job
/// mode: its console's `cevm-tick counter=` lines, stamped by the host,
/// measure its progress (units per host second) before and during each
/// checkpoint. Docs/benchmarks.md has the procedure and a reading.
struct BenchCheckpoint: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Each checkpoint mechanism on the same guests.",
        discussion: """
            For each RAM size: boots the bundled guest's kernel and initrd (TCG; no disk unless \
            --with-disk) with a write-heavy job, measures its \
            undisturbed progress, then for each mechanism takes a checkpoint and measures the guest's \
            progress from the request to the record being durable, with the record's pause, time to \
            durable and size. Each mechanism runs on a guest of its own. Nothing is asserted: targets are printed with "met" or "not met".
            """)

    @Option(help: "Guest RAM sizes, comma-separated.")
    var memory: String = "256M,1G,2G"

    @Option(help: "Mechanisms, comma-separated: \(Mechanism.allCases.map(\.rawValue).joined(separator: ", ")).")
    var mechanisms: String = "stop-and-save,cevm,background-snapshot"

    @Option(help: "CEVM's affinity policy (passed to cevm checkpoint --policy).")
    var policy: AffinityPolicy = .dedicated

    @Option(name: .customLong("working-set"), help: "The guest's working set (cevm.mem), default RAM/2 - 64M.")
    var workingSet: String?

    @Option(help: "Pages the guest rewrites per unit of work (cevm.pages).")
    var pages: Int = 32

    @Option(help: "Pages the guest verifies per unit of work (cevm.verify; reads, no writes).")
    var verify: Int = 256

    @Option(help: "Guest milliseconds between two progress lines (cevm.tick).")
    var tick: Int = 50

    @Option(help: "Seconds of undisturbed progress measured before each checkpoint.")
    var baseline: Double = 5

    @Flag(name: .customLong("with-disk"), help: "Give the guest the bundled disk (its workload then appends and fdatasyncs its log there every progress line).")
    var withDisk = false

    @Option(help: "Checkpoints tried, each on a new guest, when the guest dies or hangs after one.")
    var attempts: Int = 3

    @Option(help: "Checkpoints of each mechanism per RAM size (on the same guest); the targets take the median.")
    var `repeat`: Int = 1

    @Option(name: .customLong("downtime-limit"), help: "CEVM's downtime limit in ms (passed to cevm checkpoint; default: cevm's).")
    var downtimeLimit: Int?

    @Flag(
        name: .customLong("control"), inversion: .prefixedNo,
        help: "Also migrate the same guest with QEMU alone (no cevm), placed as the dedicated policy: the peer of the CEVM rows.")
    var control = true

    @Option(
        help: "Record formats to measure against each other, comma-separated (1, 2): per mechanism a first checkpoint (full) and a second one --gap seconds later in each.")
    var formats: String?

    @Option(help: "Seconds between the first checkpoint of a --formats pair being durable and the second's request.")
    var gap: Double = 4

    @Option(name: .customLong("restore-memory"), help: "With --formats: restore this RAM size's records (default: 1G if measured), and QEMU alone loading the format 1 stream.")
    var restoreMemory: String?

    @Flag(help: "Keep the temporary CEVM_HOME (its VMs are stopped anyway).")
    var keep = false

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            var sizes: [Int] = []
            for text in memory.split(separator: ",") {
                let mib = Int(try parseSize(String(text), defaultUnit: 1 << 20) >> 20)
                guard mib >= 128 else { throw CLIError("--memory \(text): at least 128M") }
                sizes.append(mib)
            }
            var chosen: [Mechanism] = []
            for text in mechanisms.split(separator: ",") {
                guard let mechanism = Mechanism(rawValue: text.trimmingCharacters(in: .whitespaces)) else {
                    throw CLIError("unknown mechanism '\(text)' (\(Mechanism.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                if !chosen.contains(mechanism) { chosen.append(mechanism) }
            }
            guard !sizes.isEmpty, !chosen.isEmpty else { throw CLIError("nothing to measure") }
            // Always in this order (each on a guest of its own).
            let order = [Mechanism.stopAndSave, .backgroundSnapshot, .cevm].filter(chosen.contains)
            let fixedSet = try workingSet.map { Int(try parseSize($0, defaultUnit: 1 << 20) >> 20) }
            guard (1...1_000_000).contains(pages), (1...1_000_000).contains(verify), (10...10_000).contains(tick), baseline >= 1,
                (1...10).contains(attempts), (1...20).contains(`repeat`), (downtimeLimit ?? 1) >= 1
            else {
                throw CLIError(
                    "--pages and --verify 1...1000000, --tick 10...10000 ms, --baseline at least 1 s, --attempts 1...10, "
                        + "--repeat 1...20, --downtime-limit at least 1 ms")
            }
            var chosenFormats: [Int] = []
            for text in (formats ?? "").split(separator: ",") {
                guard let format = Int(text.trimmingCharacters(in: .whitespaces)), [1, 2].contains(format) else {
                    throw CLIError("--formats '\(text)': 1 or 2")
                }
                if !chosenFormats.contains(format) { chosenFormats.append(format) }
            }
            guard gap >= 1, gap <= 600 else { throw CLIError("--gap 1...600 s") }
            var restoreMiB: Int?
            if !chosenFormats.isEmpty {
                restoreMiB = try restoreMemory.map { Int(try parseSize($0, defaultUnit: 1 << 20) >> 20) } ?? (sizes.contains(1024) ? 1024 : nil)
                if let restoreMiB, !sizes.contains(restoreMiB) { throw CLIError("--restore-memory: not among --memory") }
            }
            let guest = BundledGuest.locate()
            let defaults = try guest.defaultAppend()
            let home = try BenchScratch.make(in: nil, prefix: "cevm-bench-ckpt")
            let stop = AsyncSignal()
            let sources = DiskServe.installSignalHandlers(stop)
            defer { sources.forEach { $0.cancel() } }
            let runner = CheckpointBenchRunner(
                home: home, sizes: sizes, mechanisms: order, policy: policy, workingSet: fixedSet, pages: pages, verify: verify,
                tick: tick, baseline: baseline, attempts: attempts, repeats: `repeat`, downtimeLimit: downtimeLimit, control: control,
                withDisk: withDisk,
                guest: BenchGuest(kernel: guest.kernel, initrd: guest.initrd, disk: guest.disk), defaultAppend: defaults, stop: stop,
                formats: chosenFormats, gap: gap, restoreMiB: restoreMiB)
            try await runner.runAndReport(keep: keep, json: common.json)
        }
    }
}
