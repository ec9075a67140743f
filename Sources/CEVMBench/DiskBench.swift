#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import DiskExportNBD
import DiskManager
import Foundation
import NBDServer
import QCOW2
import QEMU
import QMP
import Supervisor
import VMStore

// MARK: - Report

/// The median, min and max of one measurement's runs.
struct Spread: Codable, Sendable {
    var median: Double
    var min: Double
    var max: Double
    var samples: [Double]

    init(_ samples: [Double]) {
        let sorted = samples.sorted()
        self.samples = samples
        self.min = sorted.first ?? .nan
        self.max = sorted.last ?? .nan
        if sorted.isEmpty {
            median = .nan
        } else if sorted.count % 2 == 1 {
            median = sorted[sorted.count / 2]
        } else {
            median = (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        }
    }

    /// "123.4 (120.1–130.2)"
    func text(_ digits: Int = 1) -> String {
        let f = "%.\(digits)f"
        if samples.count < 2 { return String(format: f, median) }
        return String(format: f, median) + " (" + String(format: f, min) + "–" + String(format: f, max) + ")"
    }
}

struct DiskBenchReport: Encodable {
    struct Machine: Encodable {
        var cpus: Int
        var qemu: String
        var clusterSize: Int64
        var virtualSize: Int64
        var tAllocatedClusters: Int
        var repeats: Int
    }

    struct NBDCase: Encodable {
        var name: String
        var write: Bool
        var blockSize: Int64
        var depth: Int
        var count: Int64
        /// Bytes between consecutive requests (qemu-img bench -S).
        var step: Int64
        /// MiB/s.
        var cevm: Spread
        var qemuNBD: Spread
        /// Average µs per request (total time / count): meaningful at depth 1.
        var cevmLatencyMicroseconds: Spread
        var qemuNBDLatencyMicroseconds: Spread
        var ratio: Double
    }

    /// One dd case in the guest.
    struct GuestCase: Encodable {
        var name: String
        var bytes: Int64
        /// MiB/s as the guest timed it (/proc/uptime, 10 ms resolution).
        var cevm: Spread
        var qemuNBD: Spread
        var ratio: Double
    }

    struct Sweep: Encodable {
        var name: String
        var bytes: Int64
        var seconds: Spread
        /// MiB/s of T's allocated data.
        var throughput: Spread
    }

    struct Target: Encodable {
        var name: String
        var value: Double
        var required: Double
        var met: Bool
    }

    /// cevm's requests, and how many of them its disk served on the NBD
    /// event loop rather than on its I/O thread (`ManagedDisk`).
    struct InlineShare: Encodable {
        var reads: UInt64 = 0
        var readsInline: UInt64 = 0
        var writes: UInt64 = 0
        var writesInline: UInt64 = 0

        mutating func add(_ other: InlineShare) {
            reads += other.reads
            readsInline += other.readsInline
            writes += other.writes
            writesInline += other.writesInline
        }

        func text() -> String {
            func share(_ part: UInt64, _ whole: UInt64) -> String {
                whole == 0 ? "none" : String(format: "%.1f %%", Double(part) * 100 / Double(whole))
            }
            return "\(share(readsInline, reads)) of \(reads) reads, \(share(writesInline, writes)) of \(writes) writes"
        }
    }

    var machine: Machine
    var nbd: [NBDCase]
    var guest: [GuestCase]
    var sweeps: [Sweep]
    var checks: [String]
    var targets: [Target]
    var inGuest: String
    /// Served on the event loop by cevm, in the qemu-img bench runs and in the guest runs.
    var nbdInline: InlineShare
    var guestInline: InlineShare

    func text() -> String {
        var out: [String] = []
        let tMiB = String(format: "%.1f", Double(machine.tAllocatedClusters) * Double(machine.clusterSize) / Double(1 << 20))
        out.append(
            "cevm bench disk: \(machine.virtualSize >> 20) MiB chain, \(machine.clusterSize >> 10) KiB clusters, "
                + "T holds \(machine.tAllocatedClusters) clusters (\(tMiB) MiB); "
                + "\(machine.cpus) CPUs, QEMU \(machine.qemu); median (min–max) of \(machine.repeats) runs")
        out.append("")
        out.append("NBD over a Unix socket, qemu-img bench -f raw (MiB/s; ratio = cevm / qemu-nbd)")
        var rows = [["case", "requests", "cevm MiB/s", "qemu-nbd MiB/s", "ratio"]]
        for c in nbd where c.depth > 1 {
            rows.append([c.name, "\(c.count)", c.cevm.text(), c.qemuNBD.text(), String(format: "%.2f", c.ratio)])
        }
        out.append(table(rows))
        out.append("cevm served on the event loop: \(nbdInline.text()) (all cases)")
        out.append("")
        out.append("Latency at depth 1 (µs per request = run time / requests; ratio = qemu-nbd / cevm)")
        rows = [["case", "requests", "cevm µs", "qemu-nbd µs", "ratio"]]
        for c in nbd where c.depth == 1 {
            rows.append([
                c.name, "\(c.count)", c.cevmLatencyMicroseconds.text(), c.qemuNBDLatencyMicroseconds.text(),
                String(format: "%.2f", c.qemuNBDLatencyMicroseconds.median / c.cevmLatencyMicroseconds.median),
            ])
        }
        out.append(table(rows))
        out.append("")
        if !guest.isEmpty {
            out.append("In the guest: \(inGuest) (MiB/s; ratio = cevm / qemu-nbd)")
            rows = [["case", "MiB", "cevm MiB/s", "qemu-nbd MiB/s", "ratio"]]
            for c in guest {
                rows.append([c.name, "\(c.bytes >> 20)", c.cevm.text(), c.qemuNBD.text(), String(format: "%.2f", c.ratio)])
            }
            out.append(table(rows))
            out.append("cevm served on the event loop: \(guestInline.text()) (all cases)")
            out.append("")
        }
        out.append("Sweep of T's \(tMiB) MiB into a new top (MiB/s of T's data)")
        rows = [["sweep", "seconds", "MiB/s"]]
        for s in sweeps { rows.append([s.name, s.seconds.text(3), s.throughput.text()]) }
        out.append(table(rows))
        out.append("")
        out.append("Targets")
        rows = [["target", "value", "required", ""]]
        for t in targets {
            rows.append([t.name, String(format: "%.2f", t.value), String(format: "≥ %.2f", t.required), t.met ? "met" : "not met"])
        }
        out.append(table(rows))
        out.append("")
        if guest.isEmpty { out.append("In-guest throughput: \(inGuest)") }
        out.append("Checks: " + checks.joined(separator: "; "))
        return out.joined(separator: "\n")
    }
}

// MARK: - Scratch directories and tools

public enum BenchScratch {
    /// A new private directory `<parent>/<prefix>-<pid>-<random>`.
    public static func make(in parent: String?, prefix: String) throws -> String {
        var base = parent.map(Home.absolute) ?? (ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp")
        while base.count > 1 && base.hasSuffix("/") { base.removeLast() }
        guard Files.isDirectory(base) else { throw BenchError("scratch directory \(base) does not exist") }
        let path = "\(base)/\(prefix)-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
        guard !path.contains(",") else { throw BenchError("scratch path \(path) contains a comma (QEMU option syntax)") }
        try Files.makeDirectory(path, mode: 0o700)
        return path
    }

    public static func remove(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Copies and fsyncs (so the page cache does not write the copy back
    /// in the middle of a measurement).
    static func copy(_ source: String, to destination: String) throws {
        Files.remove(destination)
        do {
            try FileManager.default.copyItem(atPath: source, toPath: destination)
            try Files.fsync(path: destination)
        } catch {
            throw BenchError("cannot copy \(source) to \(destination): \(error)")
        }
    }
}

enum BenchTools {
    /// "7.2.22" from `qemu-img --version`.
    static func qemuVersion() async -> String {
        guard let output = try? await Tool.run("qemu-img", ["--version"]) else { return "?" }
        let words = output.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" })
        if let index = words.firstIndex(of: "version"), index + 1 < words.count { return String(words[index + 1]) }
        return "?"
    }

    /// The seconds of qemu-img bench's "Run completed in X seconds."
    static func benchSeconds(_ output: String) throws -> Double {
        for line in output.split(separator: "\n") where line.hasPrefix("Run completed in ") {
            let rest = line.dropFirst("Run completed in ".count)
            if let end = rest.firstIndex(of: " "), let value = Double(rest[..<end]) { return value }
        }
        throw BenchError("qemu-img bench printed no run time: \(output)")
    }
}

// MARK: - The runner

/// `cevm bench disk`'s measurements (the command's help and
/// Docs/benchmarks.md say what they are).
public final class DiskBenchRunner: Sendable {
    public static let clusterSize: Int64 = 64 << 10
    static let exportName = "disk"
    /// Requests per case are scaled so that each run moves about this share of the image.
    static let randomStepBlocks: Int64 = 7919

    let work: String
    let size: Int64
    let repeats: Int
    let guestMiB: Int
    let stop: AsyncSignal
    let guest: BenchGuest
    let clusterSize = DiskBenchRunner.clusterSize

    var basePath: String { "\(work)/B.qcow2" }
    var topPath: String { "\(work)/T.qcow2" }

    public init(work: String, size: Int64, repeats: Int, guestMiB: Int, guest: BenchGuest, stop: AsyncSignal) {
        self.guest = guest
        self.work = work
        self.size = size
        self.repeats = repeats
        self.guestMiB = guestMiB
        self.stop = stop
    }

    func checkStop() throws {
        if stop.fired { throw BenchError("interrupted") }
    }

    /// Measures, then prints the report (JSON or a table) on stdout.
    public func runAndReport(keep: Bool, json: Bool) async throws {
        let report = try await run()
        BenchOutput.endProgress()
        if keep { StandardError.write("cevm: scratch files kept in \(work)\n") }
        if json { return try BenchOutput.json(report) }
        BenchOutput.line(report.text())
    }

    func run() async throws -> DiskBenchReport {
        let qemu = await BenchTools.qemuVersion()
        BenchOutput.progress("building the chain (\(size >> 20) MiB)…")
        let allocated = try await buildChain()
        var checks: [String] = []
        var nbdInline = DiskBenchReport.InlineShare(), guestInline = DiskBenchReport.InlineShare()
        let nbd = try await nbdCases(checks: &checks, inline: &nbdInline)
        let (guest, inGuest) = try await guestCases(checks: &checks, inline: &guestInline)
        let sweeps = try await sweepCases(checks: &checks)
        var targets: [DiskBenchReport.Target] = []
        for c in nbd where c.depth > 1 {
            targets.append(.init(name: "NBD \(c.name): cevm / qemu-nbd", value: c.ratio, required: 0.9, met: c.ratio >= 0.9))
        }
        for c in guest {
            targets.append(.init(name: "in the guest, \(c.name): cevm / qemu-nbd", value: c.ratio, required: 0.9, met: c.ratio >= 0.9))
        }
        if let cevm = sweeps.first(where: { $0.name.hasPrefix("cevm integration only") }) {
            for qemu in sweeps where qemu.name.hasPrefix("QEMU block-stream") {
                let ratio = cevm.throughput.median / qemu.throughput.median
                targets.append(.init(name: "sweep: cevm integration / \(qemu.name)", value: ratio, required: 0.9, met: ratio >= 0.9))
            }
        }
        return DiskBenchReport(
            machine: .init(
                cpus: ProcessInfo.processInfo.activeProcessorCount, qemu: qemu, clusterSize: clusterSize, virtualSize: size,
                tAllocatedClusters: allocated, repeats: repeats),
            nbd: nbd, guest: guest, sweeps: sweeps, checks: checks, targets: targets, inGuest: inGuest,
            nbdInline: nbdInline, guestInline: guestInline)
    }

    // MARK: The chain

    /// B: random data, every cluster allocated (qemu-img convert from a raw
    /// file). T: an overlay over B (backing named relatively, so copies of T
    /// beside it share B) with every third cluster written by qemu-io, each
    /// with its own byte pattern. Returns T's allocated clusters.
    func buildChain() async throws -> Int {
        let raw = "\(work)/random.raw"
        try writeRandom(raw, bytes: size)
        try await Tool.check(
            "qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=\(clusterSize)", raw, basePath],
            timeout: .seconds(600))
        Files.remove(raw)
        try await Tool.check(
            "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=\(clusterSize)", "-b", "B.qcow2", "-F", "qcow2", topPath])
        let clusters = size / clusterSize
        var commands: [String] = []
        for k in stride(from: Int64(0), to: clusters, by: 3) {
            commands.append("write -q -P \(Int(k / 3 % 250) + 1) \(k * clusterSize) \(clusterSize)")
        }
        var index = 0
        while index < commands.count {
            try checkStop()
            let batch = commands[index..<min(index + 400, commands.count)]
            try await Tool.check("qemu-io", ["-f", "qcow2"] + batch.flatMap { ["-c", $0] } + [topPath], timeout: .seconds(600))
            index += batch.count
        }
        for path in [basePath, topPath] { try Files.fsync(path: path) }
        do {
            return Int(try QCOW2Image.open(path: topPath).allocatedClusterCount())
        } catch {
            throw BenchError("cannot read \(topPath): \(error)")
        }
    }

    /// `bytes` of xorshift64* output.
    func writeRandom(_ path: String, bytes: Int64) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BenchError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(bytes)
        var buffer = [UInt64](repeating: 0, count: 1 << 17)  // 1 MiB
        var left = bytes
        while left > 0 {
            for i in buffer.indices {
                state ^= state >> 12
                state ^= state << 25
                state ^= state >> 27
                buffer[i] = state &* 0x2545_F491_4F6C_DD1D
            }
            let count = Int(min(left, Int64(buffer.count * 8)))
            try buffer.withUnsafeBytes { raw in
                try Files.writeAll(fd, UnsafeRawBufferPointer(rebasing: raw[0..<count]), subject: path)
            }
            left -= Int64(count)
        }
    }

    // MARK: NBD

    struct Case {
        var name: String
        var write: Bool
        var blockSize: Int64
        var depth: Int
        var count: Int64
        var step: Int64
    }

    /// The cases, in the order they run on each server (the writes change
    /// T, so both servers see the same sequence from the same start).
    var cases: [Case] {
        let small: Int64 = 4 << 10, large: Int64 = 64 << 10
        let random = DiskBenchRunner.randomStepBlocks
        return [
            Case(name: "read seq 4K d16", write: false, blockSize: small, depth: 16, count: size / small, step: small),
            Case(name: "read seq 64K d16", write: false, blockSize: large, depth: 16, count: size / large, step: large),
            Case(name: "read rand 4K d16", write: false, blockSize: small, depth: 16, count: size / small / 2, step: small * random),
            Case(name: "read rand 64K d16", write: false, blockSize: large, depth: 16, count: size / large, step: large * random),
            Case(name: "read 4K d1", write: false, blockSize: small, depth: 1, count: min(20000, size / small), step: small * random),
            // The first writes: most land on clusters T does not hold yet
            // (allocation, copy-on-write of the rest of the cluster from B).
            Case(name: "write rand 4K d16 (allocating)", write: true, blockSize: small, depth: 16, count: size / small / 8, step: small * random),
            Case(name: "write seq 64K d16", write: true, blockSize: large, depth: 16, count: size / large, step: large),
            Case(name: "write seq 4K d16", write: true, blockSize: small, depth: 16, count: size / small, step: small),
            Case(name: "write rand 4K d16", write: true, blockSize: small, depth: 16, count: size / small / 2, step: small * random),
            Case(name: "write 4K d1", write: true, blockSize: small, depth: 1, count: min(20000, size / small), step: small * random),
        ]
    }

    func bench(_ c: Case, socket: String) async throws -> Double {
        var arguments = [
            "bench", "-f", "raw", "-c", "\(c.count)", "-s", "\(c.blockSize)", "-d", "\(c.depth)", "-S", "\(c.step)",
        ]
        if c.write { arguments += ["-w", "--pattern=92"] }
        arguments.append(BenchSocket.uri(export: DiskBenchRunner.exportName, socket: socket))
        let output = try await Tool.check("qemu-img", arguments, timeout: .seconds(900))
        return try BenchTools.benchSeconds(output.stdout)
    }

    /// cevm's export of `path`, served from this process as a VM's supervisor serves it.
    final class CEVMServer: Sendable {
        let disk: ManagedDisk
        let server: NBDServer

        init(path: String, socket: String) async throws {
            let top: QCOW2Image
            do { top = try QCOW2Image.open(path: path, writable: true) } catch { throw BenchError("cannot open \(path): \(error)") }
            disk = ManagedDisk(top: top)
            server = NBDServer(configuration: .init(log: { record in
                if record.level >= .warning { StandardError.write("cevm: \(record.description)\n") }
            }))
            do {
                try server.addExport(name: DiskBenchRunner.exportName, export: DiskExport(disk: disk))
                try await server.listen(unixSocketPath: socket)
            } catch {
                await server.shutdown()
                throw BenchError("cevm's NBD server: \(error)")
            }
        }

        var inlineShare: DiskBenchReport.InlineShare {
            let counts = server.statistics(name: DiskBenchRunner.exportName) ?? NBDExportStatistics()
            return .init(
                reads: counts.reads, readsInline: UInt64(disk.readsServedInline),
                writes: counts.writes, writesInline: UInt64(disk.writesServedInline))
        }

        func stop() async throws {
            await server.shutdown()
            do { try await disk.flush() } catch { throw BenchError("flushing cevm's export: \(error)") }
        }
    }

    /// qemu-nbd on `path`: writeback cache (no O_DIRECT), thread pool AIO,
    /// persistent so that every qemu-img bench run reconnects.
    func startQEMUNBD(path: String, socket: String) async throws -> ChildProcess {
        Files.remove(socket)
        let child = try ChildProcess.spawn(
            "qemu-nbd",
            arguments: [
                "--socket=\(socket)", "--format=qcow2", "--export-name=\(DiskBenchRunner.exportName)", "--cache=writeback",
                "--aio=threads", "--detect-zeroes=off", "--persistent", "--shared=4", path,
            ],
            stdout: .appendFile("\(work)/qemu-nbd.log"), stderr: .appendFile("\(work)/qemu-nbd.log"))
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if !child.isRunning { break }
            if let fd = try? UnixSocket.connect(path: socket) {
                close(fd)
                return child
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        await child.terminate(grace: .seconds(2))
        let log = (try? Files.readString("\(work)/qemu-nbd.log")) ?? ""
        throw BenchError("qemu-nbd did not start serving \(socket): \(log)")
    }

    func nbdCases(checks: inout [String], inline: inout DiskBenchReport.InlineShare) async throws -> [DiskBenchReport.NBDCase] {
        let cases = self.cases
        var cevmSeconds = [[Double]](repeating: [], count: cases.count)
        var qemuSeconds = [[Double]](repeating: [], count: cases.count)
        let cevmCopy = "\(work)/T-cevm.qcow2", qemuCopy = "\(work)/T-qemu.qcow2"
        let cevmSocket = "\(work)/cevm.sock", qemuSocket = "\(work)/qemu-nbd.sock"
        for socket in [cevmSocket, qemuSocket] { try BenchSocket.check(socket) }
        for run in 0..<repeats {
            try BenchScratch.copy(topPath, to: cevmCopy)
            try BenchScratch.copy(topPath, to: qemuCopy)
            let cevm = try await CEVMServer(path: cevmCopy, socket: cevmSocket)
            let qemu: ChildProcess
            do { qemu = try await startQEMUNBD(path: qemuCopy, socket: qemuSocket) } catch {
                try? await cevm.stop()
                throw error
            }
            do {
                for (index, c) in cases.enumerated() {
                    // Alternate who goes first, run by run.
                    for cevmTurn in run % 2 == 0 ? [true, false] : [false, true] {
                        try checkStop()
                        // The page cache writes back what earlier cases wrote
                        // now, not in the middle of a measured run.
                        for copy in [cevmCopy, qemuCopy] { try Files.fsync(path: copy) }
                        BenchOutput.progress("NBD run \(run + 1)/\(repeats): \(c.name) on \(cevmTurn ? "cevm" : "qemu-nbd")…")
                        let seconds = try await bench(c, socket: cevmTurn ? cevmSocket : qemuSocket)
                        if cevmTurn { cevmSeconds[index].append(seconds) } else { qemuSeconds[index].append(seconds) }
                    }
                }
            } catch {
                try? await cevm.stop()
                await qemu.terminate(grace: .seconds(5))
                throw error
            }
            inline.add(cevm.inlineShare)
            try await cevm.stop()
            let status = await qemu.terminate(grace: .seconds(30))
            if status != .signaled(SIGTERM) && !status.succeeded {
                throw BenchError("qemu-nbd \(status); log: \((try? Files.readString("\(work)/qemu-nbd.log")) ?? "")")
            }
            // Both servers got the same writes: each copy is a sound image and they read the same.
            for copy in [cevmCopy, qemuCopy] {
                try await Tool.check("qemu-img", ["check", "-q", "-f", "qcow2", copy], timeout: .seconds(600))
            }
            try await Tool.check("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", cevmCopy, qemuCopy], timeout: .seconds(600))
        }
        checks.append("after each NBD run, qemu-img check passed on both copies of T and qemu-img compare found them identical")
        return cases.enumerated().map { index, c in
            let mib = Double(c.count * c.blockSize) / Double(1 << 20)
            let cevm = Spread(cevmSeconds[index].map { mib / $0 })
            let qemu = Spread(qemuSeconds[index].map { mib / $0 })
            return DiskBenchReport.NBDCase(
                name: c.name, write: c.write, blockSize: c.blockSize, depth: c.depth, count: c.count, step: c.step,
                cevm: cevm, qemuNBD: qemu,
                cevmLatencyMicroseconds: Spread(cevmSeconds[index].map { $0 * 1e6 / Double(c.count) }),
                qemuNBDLatencyMicroseconds: Spread(qemuSeconds[index].map { $0 * 1e6 / Double(c.count) }),
                ratio: cevm.median / qemu.median)
        }
    }

    // MARK: In the guest

    /// The dd cases of scripts/guest/init (`cevm.ddbench`): the key it prints, and the name here.
    static let guestCases: [(key: String, name: String)] = [
        ("read-seq-4k", "dd read seq 4K"), ("read-seq-64k", "dd read seq 64K"),
        ("write-seq-4k", "dd write seq 4K"), ("write-seq-64k", "dd write seq 64K"),
    ]

    /// The bundled guest with `cevm.ddbench=MIB`, its disk a virtio-blk
    /// drive on cevm's export of one fresh copy of T, then on qemu-nbd's of
    /// another (the order alternates run by run). Returns the cases and the
    /// line that describes them (or why they were not measured).
    func guestCases(checks: inout [String], inline: inout DiskBenchReport.InlineShare) async throws -> ([DiskBenchReport.GuestCase], String) {
        guard guestMiB > 0 else { return ([], "not measured (--guest-mib 0)") }
        guard Files.exists(guest.kernel), Files.exists(guest.initrd) else {
            return ([], "not measured: the bundled guest is not built (run scripts/build-guest)")
        }
        var cevmRates: [String: [Double]] = [:], qemuRates: [String: [Double]] = [:]
        let cevmCopy = "\(work)/T-cevm-guest.qcow2", qemuCopy = "\(work)/T-qemu-guest.qcow2"
        let cevmSocket = "\(work)/cevm-guest.sock", qemuSocket = "\(work)/qemu-nbd-guest.sock"
        for socket in [cevmSocket, qemuSocket] { try BenchSocket.check(socket) }
        for run in 0..<repeats {
            try BenchScratch.copy(topPath, to: cevmCopy)
            try BenchScratch.copy(topPath, to: qemuCopy)
            let cevm = try await CEVMServer(path: cevmCopy, socket: cevmSocket)
            let qemu: ChildProcess
            do { qemu = try await startQEMUNBD(path: qemuCopy, socket: qemuSocket) } catch {
                try? await cevm.stop()
                throw error
            }
            do {
                for cevmTurn in run % 2 == 0 ? [true, false] : [false, true] {
                    try checkStop()
                    for copy in [cevmCopy, qemuCopy] { try Files.fsync(path: copy) }
                    BenchOutput.progress("guest run \(run + 1)/\(repeats): dd on \(cevmTurn ? "cevm" : "qemu-nbd")…")
                    let rates = try await guestRun(guest, socket: cevmTurn ? cevmSocket : qemuSocket)
                    for (key, rate) in rates {
                        if cevmTurn { cevmRates[key, default: []].append(rate) } else { qemuRates[key, default: []].append(rate) }
                    }
                }
            } catch {
                try? await cevm.stop()
                await qemu.terminate(grace: .seconds(5))
                throw error
            }
            inline.add(cevm.inlineShare)
            try await cevm.stop()
            let status = await qemu.terminate(grace: .seconds(30))
            if status != .signaled(SIGTERM) && !status.succeeded {
                throw BenchError("qemu-nbd \(status); log: \((try? Files.readString("\(work)/qemu-nbd.log")) ?? "")")
            }
            for copy in [cevmCopy, qemuCopy] {
                try await Tool.check("qemu-img", ["check", "-q", "-f", "qcow2", copy], timeout: .seconds(600))
            }
            try await Tool.check("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", cevmCopy, qemuCopy], timeout: .seconds(600))
            Files.remove(cevmCopy)
            Files.remove(qemuCopy)
        }
        checks.append("after each guest run, qemu-img check passed on both copies of T and qemu-img compare found them identical")
        let cases = Self.guestCases.map { key, name in
            let cevm = Spread(cevmRates[key] ?? []), qemu = Spread(qemuRates[key] ?? [])
            return DiskBenchReport.GuestCase(
                name: name, bytes: Int64(guestMiB) << 20, cevm: cevm, qemuNBD: qemu, ratio: cevm.median / qemu.median)
        }
        let note = "busybox dd with O_DIRECT on /dev/vda, \(guestMiB) MiB per case; 1 vCPU, TCG, q35, virtio-blk on -blockdev driver=nbd"
        return (cases, note)
    }

    /// One boot of the bundled guest in dd mode on the export at `socket`:
    /// MiB/s per case key, as the guest timed it.
    func guestRun(_ guest: BenchGuest, socket: String) async throws -> [String: Double] {
        let console = "\(work)/guest-console.log", errors = "\(work)/guest-qemu.log"
        let qemu = try ChildProcess.spawn(
            QEMUCommandLine.defaultBinary,
            arguments: [
                "-machine", QEMUCommandLine.defaultMachine, "-accel", "tcg", "-cpu", "max", "-m", "128", "-smp", "1",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
                "-kernel", guest.kernel, "-initrd", guest.initrd,
                "-append", "console=ttyS0 panic=-1 quiet cevm.ddbench=\(guestMiB)",
                "-blockdev", "driver=nbd,node-name=disk0,server.type=unix,server.path=\(socket),export=\(DiskBenchRunner.exportName)",
                "-device", "virtio-blk-pci,drive=disk0",
            ],
            stdout: .truncateFile(console), stderr: .truncateFile(errors))
        let deadline = ContinuousClock.now + .seconds(900)
        while qemu.isRunning {
            let text = (try? Files.readString(console)) ?? ""
            let stale = text.contains(BenchGuest.readyMarker)
            if stale || stop.fired || ContinuousClock.now > deadline {
                await qemu.terminate(grace: .seconds(5))
                if stale { throw BenchError("the bundled guest ran its workload, not dd: it predates cevm.ddbench; run scripts/build-guest") }
                try checkStop()
                throw BenchError("the guest did not finish its dd run within 900 s; console: \(text.suffix(2000))")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let text = (try? Files.readString(console)) ?? ""
        guard let rates = Self.parseDDBench(text) else {
            let qemuLog = (try? Files.readString(errors)) ?? ""
            throw BenchError("the guest's dd run did not complete; console: \(text.suffix(2000)) QEMU: \(qemuLog.suffix(1000))")
        }
        return rates
    }

    /// MiB/s per case from the guest console's `cevm-ddbench` lines; nil
    /// unless every case and the `done` line are there.
    static func parseDDBench(_ console: String) -> [String: Double]? {
        var rates: [String: Double] = [:]
        var done = false
        // Serial consoles end lines with CR LF: one Character, a newline.
        for raw in console.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line == "cevm-ddbench done" { done = true }
            guard line.hasPrefix("cevm-ddbench case=") else { continue }
            var fields: [String: String] = [:]
            for word in line.split(separator: " ").dropFirst() {
                let parts = word.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
            }
            guard let key = fields["case"], let bytes = fields["bytes"].flatMap(Double.init),
                let centiseconds = fields["centiseconds"].flatMap(Double.init)
            else { return nil }
            // A case faster than the clock's resolution counts one tick.
            rates[key] = bytes / Double(1 << 20) / (max(centiseconds, 1) / 100)
        }
        guard done, guestCases.allSatisfy({ rates[$0.key] != nil }) else { return nil }
        return rates
    }

    // MARK: Sweep

    func sweepCases(checks: inout [String]) async throws -> [DiskBenchReport.Sweep] {
        let allocated: Int64
        do { allocated = Int64(try QCOW2Image.open(path: topPath).allocatedClusterCount()) * clusterSize } catch {
            throw BenchError("cannot read \(topPath): \(error)")
        }
        var integration: [Double] = [], withRecord: [Double] = []
        var stream: [Double] = [], streamDurable: [Double] = []
        for run in 0..<repeats {
            for turn in run % 2 == 0 ? [0, 1, 2] : [2, 1, 0] {
                try checkStop()
                switch turn {
                case 0:
                    BenchOutput.progress("sweep run \(run + 1)/\(repeats): cevm integration…")
                    integration.append(try await cevmSweep(record: false))
                case 1:
                    BenchOutput.progress("sweep run \(run + 1)/\(repeats): cevm integration + full record…")
                    withRecord.append(try await cevmSweep(record: true))
                default:
                    BenchOutput.progress("sweep run \(run + 1)/\(repeats): QEMU block-stream…")
                    let (done, durable) = try await qemuStream()
                    stream.append(done)
                    streamDurable.append(durable)
                }
            }
        }
        checks.append(
            "after each sweep, qemu-img compare found U (cevm), the record R and U' (block-stream) identical to T, and qemu-img check passed on each")
        let mib = Double(allocated) / Double(1 << 20)
        func sweep(_ name: String, _ seconds: [Double]) -> DiskBenchReport.Sweep {
            .init(name: name, bytes: allocated, seconds: Spread(seconds), throughput: Spread(seconds.map { mib / $0 }))
        }
        return [
            sweep("cevm integration only (U flushed)", integration),
            sweep("cevm integration + full record (U, R flushed)", withRecord),
            sweep("QEMU block-stream (to BLOCK_JOB_COMPLETED)", stream),
            sweep("QEMU block-stream + fsync(U')", streamDurable),
        ]
    }

    /// A copy of T integrated into a new U (and a full record R) with no
    /// guest requests: the seconds from the cut to `Integration.wait()`.
    func cevmSweep(record: Bool) async throws -> Double {
        let tPath = "\(work)/T-sweep.qcow2", uPath = "\(work)/U.qcow2", rPath = "\(work)/R.qcow2"
        try BenchScratch.copy(topPath, to: tPath)
        Files.remove(uPath)
        Files.remove(rPath)
        defer {
            Files.remove(tPath)
            Files.remove(uPath)
            Files.remove(rPath)
        }
        let seconds: Double
        do {
            let t = try QCOW2Image.open(path: tPath, writable: true)
            let u = try QCOW2Image.createOverlay(path: uPath, backingFile: "B.qcow2", backingFormat: "qcow2", clusterBits: 16)
            var r: QCOW2Image?
            if record { r = try QCOW2Image.createOverlay(path: rPath, backingFile: "B.qcow2", backingFormat: "qcow2", clusterBits: 16) }
            let disk = ManagedDisk(top: t)
            let start = Timestamp.monotonic()
            let integration = try disk.cut(u: u, record: r, incremental: false)
            let stats = try await integration.wait()
            seconds = Timestamp.monotonic() - start
            disk.settle()
            guard stats.sweptClusters == stats.switchOverClusters, !record || stats.recordClusters == stats.switchOverClusters else {
                throw BenchError("integration: swept \(stats.sweptClusters), recorded \(stats.recordClusters) of \(stats.switchOverClusters) clusters")
            }
        } catch let error as BenchError {
            throw error
        } catch {
            throw BenchError("cevm integration: \(error)")
        }
        for path in record ? [uPath, rPath] : [uPath] {
            try await Tool.check("qemu-img", ["check", "-q", "-f", "qcow2", path], timeout: .seconds(600))
            try await Tool.check("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", path, topPath], timeout: .seconds(600))
        }
        return seconds
    }

    /// block-stream of a copy of T into a new top U' (U' → T → B, base B)
    /// in a QEMU with no machine: seconds to BLOCK_JOB_COMPLETED, and to
    /// U' fsynced after it.
    func qemuStream() async throws -> (Double, Double) {
        let tPath = "\(work)/T-stream.qcow2", uPath = "\(work)/U-stream.qcow2", qmpSocket = "\(work)/qmp.sock"
        try BenchSocket.check(qmpSocket)
        try BenchScratch.copy(topPath, to: tPath)
        Files.remove(uPath)
        Files.remove(qmpSocket)
        defer {
            Files.remove(tPath)
            Files.remove(uPath)
            Files.remove(qmpSocket)
        }
        try await Tool.check(
            "qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=\(clusterSize)", "-b", "T-stream.qcow2", "-F", "qcow2", uPath])
        let log = "\(work)/qemu-stream.log"
        let qemu = try ChildProcess.spawn(
            QEMUCommandLine.defaultBinary,
            arguments: [
                "-M", "none", "-accel", "tcg", "-nodefaults", "-display", "none", "-no-user-config",
                "-qmp", "unix:\(qmpSocket),server=on,wait=off",
                "-blockdev", "driver=qcow2,node-name=b,read-only=on,file.driver=file,file.filename=\(basePath)",
                "-blockdev", "driver=qcow2,node-name=t,read-only=on,backing=b,file.driver=file,file.filename=\(tPath)",
                "-blockdev", "driver=qcow2,node-name=u,backing=t,file.driver=file,file.filename=\(uPath)",
            ],
            stdout: .truncateFile(log), stderr: .truncateFile(log))
        var client: QMPClient?
        do {
            let deadline = ContinuousClock.now + .seconds(20)
            while client == nil {
                if !qemu.isRunning || ContinuousClock.now > deadline {
                    throw BenchError("QEMU did not start: \((try? Files.readString(log)) ?? "")")
                }
                if Files.exists(qmpSocket) { client = try? await QMPClient.connect(unixSocketPath: qmpSocket, timeout: .seconds(5)) }
                if client == nil { try await Task.sleep(for: .milliseconds(20)) }
            }
            guard let qmp = client else { throw BenchError("no QMP connection") }
            let events = qmp.events()
            let start = Timestamp.monotonic()
            _ = try await qmp.execute("block-stream", arguments: ["job-id": "sweep", "device": "u", "base-node": "b"])
            var completed: Double?
            for await event in events where event.name == "BLOCK_JOB_COMPLETED" && event.data["device"]?.stringValue == "sweep" {
                if let error = event.data["error"]?.stringValue { throw BenchError("block-stream failed: \(error)") }
                completed = Timestamp.monotonic()
                break
            }
            guard let completed else { throw BenchError("QMP closed before block-stream completed") }
            try Files.fsync(path: uPath)
            let durable = Timestamp.monotonic()
            _ = try? await qmp.execute("quit")
            await qmp.close()
            if await qemu.wait(timeout: .seconds(30)) == nil { await qemu.terminate(grace: .seconds(5)) }
            try await Tool.check("qemu-img", ["check", "-q", "-f", "qcow2", uPath], timeout: .seconds(600))
            try await Tool.check("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", uPath, topPath], timeout: .seconds(600))
            return (completed - start, durable - start)
        } catch {
            if let client { await client.close() }
            await qemu.terminate(grace: .seconds(5))
            throw error
        }
    }
}
