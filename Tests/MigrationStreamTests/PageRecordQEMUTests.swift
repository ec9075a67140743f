#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QEMU
import QMP
import Records
import Testing

/// Record format 2 against the whole of a guest's RAM: a paused guest's
/// physical memory is dumped (QMP `pmemsave`), its stream recorded as a page
/// image, and the stream rebuilt from the image loaded into a second QEMU,
/// whose memory must be the same byte for byte. Then the guest runs on,
/// is paused again and recorded as an increment over the first record,
/// and the chain restores the second dump exactly.
struct MigrationFailed: Error, CustomStringConvertible {
    var description: String
}

@Suite(.enabled(if: haveQEMU, "qemu-system-x86_64 is not installed"))
struct PageRecordQEMUTests {
    static let ramMiB = 128

    func instance(_ name: String, dir: String, incoming: Bool, console: QEMUStreamTests.Console) async throws -> QEMUInstance {
        try await QEMUInstance.launch(
            InstanceConfig(
                name: name, memoryMiB: Self.ramMiB, vcpus: 1, machine: "q35", accel: .tcg, boot: QEMUStreamTests.boot, drive: nil,
                qmpSocket: "\(dir)/\(name).sock", incoming: incoming),
            stderrLog: "\(dir)/\(name).stderr", console: { console.append($0) })
    }

    func waitForMigration(_ instance: QEMUInstance) async throws {
        let deadline = ContinuousClock.now + .seconds(180)
        while ContinuousClock.now < deadline {
            let info = try await instance.qmp.execute("query-migrate")
            switch info["status"]?.stringValue {
            case "completed": return
            case "failed", "cancelled":
                throw MigrationFailed(description: "migration \(info["status"]?.stringValue ?? ""): \(info["error-desc"]?.stringValue ?? "")")
            default: try await Task.sleep(for: .milliseconds(50))
            }
        }
        throw MigrationFailed(description: "migration did not complete within 180 s")
    }

    /// The guest's physical memory below its RAM size, as a file.
    func dump(_ instance: QEMUInstance, to path: String) async throws -> [UInt8] {
        _ = try await instance.qmp.execute(
            "pmemsave", arguments: ["val": .int(0), "size": .int(Int64(Self.ramMiB) << 20), "filename": .string(path)])
        return try Files.read(path, limit: (Self.ramMiB << 20) + 1)
    }

    /// Records a paused source's stream (migrated to a file) as a page record.
    func record(_ source: QEMUInstance, dir: String, name: String, parent: PageRecorder.Parent?) async throws -> RecordManifest.MemoryRecord {
        let raw = "\(dir)/\(name).mig"
        _ = try await source.qmp.execute("migrate-set-parameters", arguments: ["max-bandwidth": .int(1 << 40)])
        _ = try await source.qmp.execute("migrate", arguments: ["uri": .string("file:\(raw)")])
        try await waitForMigration(source)
        let directory = "\(dir)/records/\(name)"
        try Files.makeDirectory(directory)
        let recorder = try PageRecorder(directory: directory, parent: parent)
        let bytes = try Files.read(raw, limit: Int.max)
        // In odd chunks, as a tee would see them.
        try bytes.withUnsafeBytes { all in
            var at = 0
            while at < all.count {
                let end = min(all.count, at + 300_007)
                try recorder.write(UnsafeRawBufferPointer(rebasing: all[at..<end]))
                at = end
            }
        }
        return try recorder.finish().memory
    }

    /// Loads the stream `memory` (in `directory`) rebuilds into a new QEMU and dumps its RAM.
    func restoreAndDump(_ memory: RecordManifest.MemoryRecord, directory: String, dir: String, name: String) async throws -> [UInt8] {
        let reader = try MemoryImageReader(path: "\(directory)/\(memory.image)", layout: memory.layout)
        let rebuilt = "\(dir)/\(name).rebuilt"
        let fd = open(rebuilt, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(fd) }
        _ = try MemoryImage.writeStream(
            reader: reader, prologue: try Files.read("\(directory)/\(memory.prologue)"),
            epilogue: try Files.read("\(directory)/\(memory.epilogue)", limit: 256 << 20)
        ) { chunk in try Files.writeAll(fd, chunk) }
        let destination = try await instance(name, dir: dir, incoming: true, console: QEMUStreamTests.Console())
        do {
            _ = try await destination.qmp.execute("migrate-incoming", arguments: ["uri": .string("file:\(rebuilt)")])
            try await waitForMigration(destination)
            let ram = try await dump(destination, to: "\(dir)/\(name).ram")
            await destination.stop()
            return ram
        } catch {
            await destination.stop()
            throw error
        }
    }

    @Test(.timeLimit(.minutes(6)))
    func aChainRestoresTheWholeRAMByteForByte() async throws {
        let dir = "/tmp/cevm-pages-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let console = QEMUStreamTests.Console()
        let source = try await instance("src", dir: dir, incoming: false, console: console)
        do {
            let deadline = ContinuousClock.now + .seconds(60)
            while console.ticks < 3 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(200)) }
            // First record: full.
            _ = try await source.qmp.execute("stop")
            let first = try await dump(source, to: "\(dir)/first.ram")
            let full = try await record(source, dir: dir, name: "r1", parent: nil)
            #expect(full.kind == .full)
            #expect(full.dataPages + full.zeroPages <= full.layout.guestPages)
            // The guest computes on a while (a migration to a file leaves
            // it paused in postmigrate; `cont` runs it again).
            _ = try await source.qmp.execute("cont")
            let ticks = console.ticks
            while console.ticks < ticks + 5 && ContinuousClock.now < deadline + .seconds(60) { try await Task.sleep(for: .milliseconds(200)) }
            _ = try await source.qmp.execute("stop")
            let second = try await dump(source, to: "\(dir)/second.ram")
            let increment = try await record(
                source, dir: dir, name: "r2", parent: PageRecorder.Parent(id: "r1", directory: "\(dir)/records/r1", memory: full))
            await source.stop()
            #expect(increment.kind == .incremental && increment.parent == "r1")
            // Only what changed: far fewer pages than the full record.
            #expect(increment.dataPages + increment.zeroPages < full.dataPages / 4, "\(increment.dataPages) data pages over \(full.dataPages)")
            let changed = zip(stride(from: 0, to: first.count, by: 4096), stride(from: 0, to: first.count, by: 4096)).filter { a, _ in
                first[a..<(a + 4096)] != second[a..<(a + 4096)]
            }.count
            print("page record of a \(Self.ramMiB) MiB guest: full \(full.dataPages) data pages; increment \(increment.dataPages) data + \(increment.zeroPages) zero pages; \(changed) pages of the RAM dump changed")

            let restoredFirst = try await restoreAndDump(full, directory: "\(dir)/records/r1", dir: dir, name: "dst1")
            #expect(restoredFirst == first, "the full record restores the first dump byte for byte")
            let restoredSecond = try await restoreAndDump(increment, directory: "\(dir)/records/r2", dir: dir, name: "dst2")
            #expect(restoredSecond == second, "the chain restores the second dump byte for byte")
        } catch {
            await source.stop()
            throw error
        }
    }
}
