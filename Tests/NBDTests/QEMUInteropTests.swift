import CEVMSystem
import NBDProtocol
import NBDServer
import QCOW2
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// QEMU's own NBD client (qemu-io, qemu-img, qemu-nbd), run for real
/// against the server.
@Suite struct QEMUInteropTests {
    static let size = 4 << 20

    /// A raw file of `size` bytes, served read-write as "disk".
    static func rawServer(size: Int = size, content: [UInt8]? = nil) async throws -> (TestServer, String) {
        let server = try await TestServer.start()
        let raw = server.scratch.file("disk.raw")
        try writeFile(raw, content ?? [UInt8](repeating: 0, count: size))
        try server.server.addExport(name: "disk", export: try FileExport(path: raw, writable: true))
        return (server, raw)
    }

    @Test func qemuIoWritesAndReadsBackAPattern() async throws {
        let (s, raw) = try await Self.rawServer()
        let uri = nbdURI("disk", socket: s.socket)
        let output = try await must(
            ["qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M", uri], in: s.scratch)
        #expect(!output.contains("Pattern verification failed"), "\(output)")
        #expect(output.contains("wrote 1048576/1048576 bytes"))
        #expect(output.contains("read 1048576/1048576 bytes"))
        // The bytes are in the file, and the export and the file compare equal.
        #expect(try readFile(raw).prefix(1 << 20).allSatisfy { $0 == 0xab })
        try await must(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, raw], in: s.scratch)
        let stats = try #require(s.server.statistics(name: "disk"))
        #expect(stats.bytesWritten >= 1 << 20)
        #expect(stats.bytesRead >= 1 << 20)
        #expect(stats.errors == 0)
        await s.server.shutdown()
    }

    @Test func qemuImgInfoSeesTheExportSize() async throws {
        let (s, _) = try await Self.rawServer()
        let output = try await must(["qemu-img", "info", "-f", "raw", nbdURI("disk", socket: s.socket)], in: s.scratch)
        #expect(output.contains("virtual size: 4 MiB (4194304 bytes)"), "\(output)")
        await s.server.shutdown()
    }

    @Test func aWriteIsReadBackThroughASecondConnection() async throws {
        let (s, _) = try await Self.rawServer()
        let uri = nbdURI("disk", socket: s.socket)
        try await must(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 512k 64k", "-c", "flush", uri], in: s.scratch)
        let output = try await must(
            ["qemu-io", "-f", "raw", "-c", "read -P 0x5a 512k 64k", "-c", "read -P 0 0 512k", uri], in: s.scratch)
        #expect(!output.contains("Pattern verification failed"), "\(output)")
        let stats = try #require(s.server.statistics(name: "disk"))
        #expect(stats.totalConnections == 2)
        #expect(stats.flushes >= 1)
        await s.server.shutdown()
    }

    @Test func writeZeroesAndDiscardThroughQemuIo() async throws {
        let (s, raw) = try await Self.rawServer(content: [UInt8](repeating: 0x11, count: Self.size))
        let uri = nbdURI("disk", socket: s.socket)
        let output = try await must(
            ["qemu-io", "-f", "raw", "-c", "write -z 64k 64k", "-c", "discard 1M 64k", "-c", "read -P 0 64k 64k", uri],
            in: s.scratch)
        #expect(!output.contains("Pattern verification failed"), "\(output)")
        let bytes = try readFile(raw)
        #expect(bytes[65536..<131072].allSatisfy { $0 == 0 })
        #expect(bytes[0..<65536].allSatisfy { $0 == 0x11 })
        let stats = try #require(s.server.statistics(name: "disk"))
        #expect(stats.writeZeroes >= 1)
        #expect(stats.trims >= 1)
        await s.server.shutdown()
    }

    @Test func qemuImgBenchRunsShortReadAndWriteLoads() async throws {
        let (s, _) = try await Self.rawServer()
        let uri = nbdURI("disk", socket: s.socket)
        let read = try await must(["qemu-img", "bench", "-f", "raw", "-c", "2000", "-d", "16", "-s", "4k", uri], in: s.scratch)
        #expect(read.contains("Run completed"), "\(read)")
        let write = try await must(
            ["qemu-img", "bench", "-w", "-f", "raw", "-c", "500", "-d", "16", "-s", "64k", "--pattern=0x3c", uri], in: s.scratch)
        #expect(write.contains("Run completed"), "\(write)")
        let stats = try #require(s.server.statistics(name: "disk"))
        #expect(stats.reads >= 2000)
        #expect(stats.writes >= 500)
        #expect(stats.errors == 0)
        await s.server.shutdown()
    }

    @Test func severalQemuClientsAtOnce() async throws {
        let (s, raw) = try await Self.rawServer()
        let uri = nbdURI("disk", socket: s.socket)
        try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<4 {
                group.addTask {
                    try await must(
                        ["qemu-io", "-f", "raw", "-c", "write -P \(0x20 + i) \(i)M 1M", "-c", "read -P \(0x20 + i) \(i)M 1M", uri],
                        in: s.scratch)
                }
            }
            for try await output in group { #expect(!output.contains("Pattern verification failed"), "\(output)") }
        }
        let bytes = try readFile(raw)
        for i in 0..<4 { #expect(bytes[(i << 20)..<((i + 1) << 20)].allSatisfy { $0 == UInt8(0x20 + i) }) }
        await s.server.shutdown()
    }

    @Test func qemuNbdListsTheExports() async throws {
        let scratch = try Scratch()
        let raw = scratch.file("a.raw")
        try writeFile(raw, [UInt8](repeating: 0, count: 65536))
        let s = try await TestServer.start()
        try s.server.addExport(name: "alpha", description: "the first disk", export: try FileExport(path: raw, writable: false))
        try s.server.addExport(name: "beta", export: try FileExport(path: raw, writable: true))
        let output = try await must(["qemu-nbd", "--list", "-k", s.socket], in: s.scratch)
        #expect(output.contains("exports available: 2"), "\(output)")
        #expect(output.contains("export: 'alpha'"))
        #expect(output.contains("description: the first disk"))
        #expect(output.contains("export: 'beta'"))
        #expect(output.contains("size:  65536"))
        await s.server.shutdown()
    }

    @Test func aReadOnlyExportRefusesQemuWrites() async throws {
        let scratch = try Scratch()
        let raw = scratch.file("ro.raw")
        try writeFile(raw, [UInt8](repeating: 7, count: 65536))
        let s = try await TestServer.start([("ro", try FileExport(path: raw, writable: false))])
        let uri = nbdURI("ro", socket: s.socket)
        let read = try await must(["qemu-io", "-r", "-f", "raw", "-c", "read -P 7 0 64k", uri], in: s.scratch)
        #expect(!read.contains("Pattern verification failed"), "\(read)")
        let write = try await runTool(["qemu-io", "-f", "raw", "-c", "write 0 4k", uri], in: s.scratch)
        // QEMU honours NBD_FLAG_READ_ONLY: it refuses to open the export for writing.
        #expect(!write.status.succeeded && write.output.contains("Permission denied"), "\(write.output)")
        #expect(try readFile(raw).allSatisfy { $0 == 7 })
        await s.server.shutdown()
    }

    /// The forms DESIGN.md gives QEMU itself: `-blockdev driver=nbd` and
    /// `-drive file=nbd+unix://...`. The monitor's `qemu-io` command writes
    /// and reads through each (a machine with no guest: `-M none`).
    @Test func qemuSystemOpensExportsWithBlockdevAndDrive() async throws {
        let s = try await TestServer.start()
        let first = s.scratch.file("first.raw")
        let second = s.scratch.file("second.raw")
        try writeFile(first, [UInt8](repeating: 0, count: 1 << 20))
        try writeFile(second, [UInt8](repeating: 0, count: 1 << 20))
        try s.server.addExport(name: "first", export: try FileExport(path: first, writable: true))
        try s.server.addExport(name: "second", export: try FileExport(path: second, writable: true))
        let commands = s.scratch.file("monitor.txt")
        try writeFile(
            commands,
            Array(
                """
                qemu-io d0 "write -P 0x77 0 64k"
                qemu-io d0 "read -P 0x77 0 64k"
                qemu-io d1 "write -P 0x78 4k 4k"
                qemu-io d1 "flush"
                quit

                """.utf8))
        let input = open(commands, O_RDONLY | O_CLOEXEC)
        #expect(input >= 0)
        defer { close(input) }
        let out = s.scratch.file("qemu.out")
        let qemu = try ChildProcess.spawn(
            "qemu-system-x86_64",
            arguments: [
                "-M", "none", "-accel", "tcg", "-nodefaults", "-display", "none", "-monitor", "stdio",
                "-blockdev", "driver=nbd,server.type=unix,server.path=\(s.socket),export=first,node-name=d0",
                "-drive", "file=\(nbdURI("second", socket: s.socket)),format=raw,if=none,id=d1",
            ],
            stdin: .descriptor(input), stdout: .truncateFile(out), stderr: .appendFile(out + ".err"))
        let status = await qemu.wait(timeout: .seconds(60))
        let output = (try? Files.readString(out)) ?? ""
        let errors = (try? Files.readString(out + ".err")) ?? ""
        #expect(status == .exited(0), "\(output) \(errors)")
        #expect(output.contains("wrote 65536/65536 bytes at offset 0"), "\(output)")
        #expect(!output.contains("Pattern verification failed"), "\(output)")
        #expect(try readFile(first).prefix(65536).allSatisfy { $0 == 0x77 })
        #expect(try readFile(second)[4096..<8192].allSatisfy { $0 == 0x78 })
        if status == nil { await qemu.terminate(grace: .seconds(1)) }
        await s.server.shutdown()
    }

    /// The export cevm serves: a qcow2 overlay on a raw base, through the
    /// blocking engine. What qemu-io writes over NBD must be what qemu-io
    /// writes to a plain raw copy, and the image must stay consistent.
    @Test func aQCOW2OverlayServedOverNBDHoldsWhatQemuWrote() async throws {
        let scratch = try Scratch()
        let base = scratch.file("base.raw")
        let expected = scratch.file("expected.raw")
        let overlay = scratch.file("overlay.qcow2")
        let basePattern = pattern(Self.size, seed: 3)
        try writeFile(base, basePattern)
        try writeFile(expected, basePattern)
        let image = try QCOW2Image.createOverlay(path: overlay, backingFile: "base.raw", backingFormat: "raw", clusterBits: 16)
        let export = BlockingExport(device: QCOW2Device(image: image), capabilities: .writable)
        let s = try await TestServer.start([("vm", export)])
        let commands = [
            "write -P 0xa1 0 64k", "write -P 0xa2 100k 300k", "write -z 1M 128k", "write -P 0xa3 2047k 2k",
            "discard 3M 64k", "write -P 0xa4 3M 64k", "flush",
        ]
        var arguments = ["qemu-io", "-f", "raw"]
        for command in commands { arguments += ["-c", command] }
        try await must(arguments + [nbdURI("vm", socket: s.socket)], in: scratch)
        // The same commands on a raw copy of the base give the expected content
        // (the discarded range is written again: a raw file and an overlay
        // read a discarded range differently, zeros against the base).
        try await must(arguments + [expected], in: scratch)
        await s.server.shutdown()
        try image.flush()

        let check = try await runTool(["qemu-img", "check", "-f", "qcow2", overlay], in: scratch)
        #expect(check.status.succeeded, "qemu-img check: \(check.output)")
        let compare = try await runTool(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", expected, overlay], in: scratch)
        #expect(compare.status.succeeded, "qemu-img compare: \(compare.output)")
    }

    /// QEMU sees the same bytes through NBD as through the image file.
    @Test func qemuImgComparesAQCOW2ExportWithItsFile() async throws {
        let scratch = try Scratch()
        let path = scratch.file("disk.qcow2")
        let image = try QCOW2Image.create(path: path, virtualSize: UInt64(Self.size), clusterBits: 12)
        try image.write(pattern(70_000, seed: 9), at: 12345)
        try image.flush()
        let s = try await TestServer.start([("q", BlockingExport(device: QCOW2Device(image: image), capabilities: .writable))])
        try await must(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", "-U", nbdURI("q", socket: s.socket), path], in: scratch)
        await s.server.shutdown()
    }
}
