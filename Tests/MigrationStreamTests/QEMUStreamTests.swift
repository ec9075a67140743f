#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import MigrationStream
import QEMU
import QMP
import Synchronization
import Testing

let haveQEMU = Executables.find(QEMUCommandLine.defaultBinary) != nil

/// Real QEMU 10 under TCG: a 128 MiB guest (the bundled guest kernel when
/// it is built, else firmware that finds nothing to boot) migrates to a
/// file; the stream is parsed, rebuilt with each page once, and a second
/// QEMU loads the rebuilt stream and runs on.
@Suite(.enabled(if: haveQEMU, "qemu-system-x86_64 is not installed"))
struct QEMUStreamTests {
    static var guestDirectory: String {
        let env = ProcessInfo.processInfo.environment
        return env["CEVM_GUEST_DIR"] ?? "\(env["XDG_CACHE_HOME"] ?? "\(env["HOME"] ?? "/root")/.cache")/cevm/guest"
    }

    static var boot: InstanceConfig.Boot {
        let dir = guestDirectory
        guard Files.exists("\(dir)/vmlinuz"), Files.exists("\(dir)/initrd.img") else { return .disk }
        return .kernel(
            kernel: "\(dir)/vmlinuz", initrd: "\(dir)/initrd.img",
            append: "console=ttyS0 panic=-1 quiet cevm.mem=48 cevm.pages=256 cevm.disk=0 cevm.tick=100")
    }

    final class Console: Sendable {
        let text = Mutex("")
        func append(_ bytes: [UInt8]) { text.withLock { $0 += String(decoding: bytes, as: UTF8.self) } }
        var ticks: Int { text.withLock { $0.components(separatedBy: "cevm-tick").count - 1 } }
        var memoryFailures: Int { text.withLock { $0.components(separatedBy: "mem=BAD").count - 1 } }
    }

    func waitForMigration(_ instance: QEMUInstance, timeout: Duration = .seconds(180)) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let info = try await instance.qmp.execute("query-migrate")
            switch info["status"]?.stringValue {
            case "completed": return info
            case "failed", "cancelled":
                Issue.record("migration \(info["status"]?.stringValue ?? "?"): \(info["error-desc"]?.stringValue ?? "")")
                return info
            default: try await Task.sleep(for: .milliseconds(100))
            }
        }
        Issue.record("migration did not complete within \(timeout)")
        return .null
    }

    /// Parses a file in `chunk`-sized pieces.
    func parse(_ path: String, chunk: Int) throws -> (MigrationStreamRecorder, seconds: Double, withoutRAMEnd: Bool) {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        var parser = MigrationStreamParser(pageSize: 4096)
        var recorder = MigrationStreamRecorder()
        let start = ContinuousClock.now
        var failure: MigrationStreamError?
        data.withUnsafeBytes { all in
            var at = 0
            while at < all.count && failure == nil {
                let end = min(all.count, at + chunk)
                do throws(MigrationStreamError) {
                    try parser.consume(UnsafeRawBufferPointer(rebasing: all[at..<end]), into: &recorder)
                } catch { failure = error }
                at = end
            }
        }
        if let failure { throw failure }
        try parser.finish()
        let elapsed = ContinuousClock.now - start
        return (recorder, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, parser.withoutRAMEnd)
    }

    /// `background`: QEMU's background snapshot (userfaultfd write
    /// protection), whose stream has the device state right after the last
    /// PART section (no switch-over, no END section) and each page once.
    @Test(.timeLimit(.minutes(6)), arguments: [false, true])
    func rebuiltStreamRestoresInQEMU(background: Bool) async throws {
        let dir = "/tmp/cevm-stream-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        // Source: boot, let the workload write memory, migrate to a file while it runs.
        let sourceConsole = Console()
        let source = try await QEMUInstance.launch(
            InstanceConfig(
                name: "src", memoryMiB: 128, vcpus: 1, machine: "q35", accel: .tcg, boot: Self.boot, drive: nil,
                qmpSocket: "\(dir)/src.sock"),
            stderrLog: "\(dir)/src.stderr", console: { sourceConsole.append($0) })
        let raw = "\(dir)/raw.mig"
        do {
            let deadline = ContinuousClock.now + .seconds(60)
            if case .kernel = Self.boot {
                while sourceConsole.ticks < 3 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(200)) }
            } else {
                try await Task.sleep(for: .seconds(2))
            }
            // Slow enough that the workload dirties pages between rounds:
            // the raw stream then sends some pages several times.
            _ = try await source.qmp.execute(
                "migrate-set-parameters", arguments: ["max-bandwidth": .int(24 << 20), "downtime-limit": .int(3000)])
            if background {
                _ = try await source.qmp.execute(
                    "migrate-set-capabilities",
                    arguments: ["capabilities": .array([.object(["capability": .string("background-snapshot"), "state": .bool(true)])])])
            }
            _ = try await source.qmp.execute("migrate", arguments: ["uri": .string("file:\(raw)")])
            let info = try await waitForMigration(source)
            #expect(info["status"]?.stringValue == "completed")
        } catch {
            await source.stop()
            throw error
        }
        await source.stop()

        // Parse in odd-sized chunks, check each block is covered at most once.
        let (recorder, seconds, withoutRAMEnd) = try parse(raw, chunk: 65_537)
        #expect(withoutRAMEnd == background, "a background snapshot's stream has no RAM END section, a pre-copy one has")
        if background {
            #expect(recorder.dataRecords + recorder.zeroRecords == recorder.pages.count, "a background snapshot sends each page once")
        }
        let rawSize = (try? FileManager.default.attributesOfItem(atPath: raw)[.size] as? Int) ?? 0
        let ram = recorder.blocks.reduce(UInt64(0)) { $0 + $1.length }
        #expect(recorder.blocks.contains { $0.name == "pc.ram" && $0.length == 128 << 20 })
        for (index, block) in recorder.blocks.enumerated() {
            let pages = recorder.pages.keys.filter { $0.block == index }
            #expect(UInt64(pages.count) <= block.length / 4096, "block \(block.name)")
            #expect(pages.allSatisfy { $0.offset % 4096 == 0 && $0.offset + 4096 <= block.length })
        }
        let zeroPages = recorder.pages.values.filter { $0 == .zero }.count

        // Rebuild and compare sizes.
        let rebuilt = try MigrationStreamWriter.rebuild(
            prologue: recorder.prologue, pages: recorder.pages, epilogue: recorder.epilogue)
        let rebuiltPath = "\(dir)/rebuilt.mig"
        try Data(rebuilt).write(to: URL(fileURLWithPath: rebuiltPath))
        let overhead = recorder.prologue.count + recorder.epilogue.count + recorder.pages.count * 9 + 1024
        #expect(UInt64(rebuilt.count) <= ram + UInt64(overhead))
        #expect(rebuilt.count <= rawSize + 18)
        print(
            """
            \(background ? "background snapshot" : "migration") stream of a 128 MiB guest: raw \(rawSize) bytes, rebuilt \(rebuilt.count) bytes; \
            RAM \(ram) bytes in \(recorder.blocks.count) blocks (\(recorder.blocks.map(\.name).joined(separator: ", "))); \
            \(recorder.dataRecords) data + \(recorder.zeroRecords) zero page records, \(recorder.pages.count) pages kept \
            (\(zeroPages) zero); prologue \(recorder.prologue.count) B, live framing \(recorder.liveBytes) B, \
            epilogue \(recorder.epilogue.count) B (PART sections: \(recorder.liveBytes / 18)); parsed (debug build, recorder copying pages) at \
            \(Int(Double(rawSize) / seconds / 1e6)) MB/s
            """)

        // Destination: load the rebuilt stream, then run on.
        let destinationConsole = Console()
        let destination = try await QEMUInstance.launch(
            InstanceConfig(
                name: "dst", memoryMiB: 128, vcpus: 1, machine: "q35", accel: .tcg, boot: Self.boot, drive: nil,
                qmpSocket: "\(dir)/dst.sock", incoming: true),
            stderrLog: "\(dir)/dst.stderr", console: { destinationConsole.append($0) })
        do {
            _ = try await destination.qmp.execute("migrate-incoming", arguments: ["uri": .string("file:\(rebuiltPath)")])
            let info = try await waitForMigration(destination)
            #expect(info["status"]?.stringValue == "completed")
            let state = try await destination.runState()
            #expect(state == "paused" || state == "running")
            if state == "paused" { try await destination.resume() }
            #expect(try await destination.runState() == "running")
            if case .kernel = Self.boot {
                // The workload goes on ticking and finds its memory intact.
                let deadline = ContinuousClock.now + .seconds(60)
                while destinationConsole.ticks < 3 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(200)) }
                #expect(destinationConsole.ticks >= 3)
                #expect(destinationConsole.memoryFailures == 0)
            }
        } catch {
            let log = (try? String(contentsOfFile: "\(dir)/dst.stderr", encoding: .utf8)) ?? ""
            Issue.record("destination: \(log)")
            await destination.stop()
            throw error
        }
        let log = (try? String(contentsOfFile: "\(dir)/dst.stderr", encoding: .utf8)) ?? ""
        #expect(log.isEmpty, "QEMU said: \(log)")
        await destination.stop()
    }
}
