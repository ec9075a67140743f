import ArgumentParser
import CEVMBench
import CEVMSystem
import QEMU
import Supervisor

/// `cevm bench disk`: the disk manager against its QEMU peers, in one run,
/// on the same qcow2 chain (B fully written, T an overlay holding a third of
/// the clusters):
///
/// - NBD: cevm's export (ManagedDisk + DiskExport + NBDServer, in this
///   process) and `qemu-nbd` each serve their own copy of T, and `qemu-img
///   bench` drives both over the same kind of Unix socket;
/// - sweep: the integration (`ManagedDisk.cut` to `Integration.wait`) of a
///   copy of T into a new U, against QEMU's `block-stream` of a copy of T
///   into a new top U';
/// - in the guest: the bundled guest boots with `cevm.ddbench=MIB` on a
///   virtio-blk drive served by each in turn, and times busybox `dd` with
///   O_DIRECT on /dev/vda (scripts/guest/init).
///
/// Every figure is the median of `--repeat` runs (min and max beside it).
/// Docs/benchmarks.md has the procedure and a reading of the figures.
struct BenchDisk: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk",
        abstract: "Disk manager vs qemu-nbd and block-stream.",
        discussion: """
            Builds a chain B <- T in a scratch directory (B fully written with random data, \
            T holding a third of the clusters), then measures NBD throughput and latency of \
            cevm's disk manager and of qemu-nbd serving copies of T (qemu-img bench), and the \
            integration sweep against QEMU's block-stream over the same chain, and dd's throughput \
            inside the bundled guest (scripts/build-guest) with its disk served by each. Needs \
            qemu-img, qemu-io, qemu-nbd and qemu-system-x86_64. Nothing is asserted: targets are \
            printed with "met" or "not met".
            """)

    @Option(help: "Virtual size of the chain (a multiple of 64K).")
    var size: String = "256M"

    @Option(help: "Directory for the scratch files (default: $TMPDIR or /tmp); a subdirectory is made and removed.")
    var scratch: String?

    @Option(help: "Runs of each measurement (the median is reported).")
    var `repeat`: Int = 3

    @Option(help: "MiB per dd case in the guest (0: no in-guest measurement; at most a quarter of --size).")
    var guestMib: Int = 32

    @Flag(help: "Keep the scratch subdirectory.")
    var keep = false

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let bytes = try parseSize(size, defaultUnit: 1 << 20)
            guard bytes % DiskBenchRunner.clusterSize == 0, bytes >= 16 << 20 else {
                throw CLIError("--size must be a multiple of 64K and at least 16M")
            }
            guard (1...50).contains(`repeat`) else { throw CLIError("--repeat must be between 1 and 50") }
            guard guestMib >= 0, Int64(guestMib) << 22 <= bytes else {
                throw CLIError("--guest-mib must be between 0 and a quarter of --size in MiB")
            }
            for tool in ["qemu-img", "qemu-io", "qemu-nbd", QEMUCommandLine.defaultBinary] where Executables.find(tool) == nil {
                throw QEMUError.qemuMissing(binary: tool)
            }
            let work = try BenchScratch.make(in: scratch, prefix: "cevm-bench-disk")
            defer { if !keep { BenchScratch.remove(work) } }
            let stop = AsyncSignal()
            let sources = DiskServe.installSignalHandlers(stop)
            defer { sources.forEach { $0.cancel() } }
            let bundled = BundledGuest.locate()
            let runner = DiskBenchRunner(
                work: work, size: bytes, repeats: `repeat`, guestMiB: guestMib,
                guest: BenchGuest(kernel: bundled.kernel, initrd: bundled.initrd, disk: bundled.disk), stop: stop)
            try await runner.runAndReport(keep: keep, json: common.json)
        }
    }
}
