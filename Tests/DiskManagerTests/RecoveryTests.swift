import CEVMSystem
import Foundation
import QCOW2
import TestSupport
import Testing

@testable import DiskManager

/// A disk manager killed during an integration: the files it leaves are
/// what the page cache holds (in-memory qcow2 metadata not flushed is lost),
/// and reopening the directory must rebuild the guest's disk with every
/// flushed write, leaving B untouched.
@Suite struct RecoveryTests {
    struct VMDir {
        let scratch: Scratch
        var model: [UInt8]
        var directory: String { scratch.file("disk") }

        init(seed: UInt64, size: Int = 2 << 20) throws {
            scratch = try Scratch()
            try Files.makeDirectory(scratch.file("disk"))
            var random = SeededRandom(seed: seed)
            model = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
            try writeFile(scratch.file("b.raw"), model)
            try must(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096",
                      scratch.file("b.raw"), scratch.file("b.qcow2")])
            let t = try QCOW2Image.createOverlay(path: scratch.file("disk/overlay.qcow2"), backingFile: scratch.file("b.qcow2"), clusterBits: 12)
            for _ in 0..<200 {
                let offset = Int.random(in: 0..<size - 1, using: &random)
                let length = min(Int.random(in: 1...9000, using: &random), size - offset)
                let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
                try t.write(bytes, at: UInt64(offset))
                model.replaceSubrange(offset..<offset + length, with: bytes)
            }
            try t.flush()
        }

        /// Copies the disk directory as a crash leaves it.
        func crashCopy() throws -> String {
            let copy = scratch.file("after-crash")
            try Files.makeDirectory(copy)
            for name in try Files.list(directory) {
                try must(["cp", "\(directory)/\(name)", "\(copy)/\(name)"])
            }
            return copy
        }
    }

    /// Kills the integration after `operations` guest requests (each write
    /// flushed, so every acknowledged write must survive), then recovers.
    @Test(arguments: [0, 1, 4, 12, 30, 60, 120, 400])
    func killAtAnyPointOfTheSweepThenRecover(operations: Int) async throws {
        var vm = try VMDir(seed: UInt64(operations) &+ 77)
        let disk = try VMDisk(directory: vm.directory)
        #expect(disk.recovery == .none)
        let cut = try disk.cut(recordPath: vm.scratch.file("r.qcow2"), previousRecord: nil, full: true, hooks: .init(lockstep: true))
        var random = SeededRandom(seed: UInt64(operations))
        let size = vm.model.count
        for _ in 0..<operations {
            let offset = Int.random(in: 0..<size - 1, using: &random)
            let length = min(Int.random(in: 1...12000, using: &random), size - offset)
            if Int.random(in: 0..<3, using: &random) == 0 {
                let got = try await disk.disk.read(offset: UInt64(offset), length: length)
                #expect(got == Array(vm.model[offset..<offset + length]))
            } else {
                let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
                try await disk.disk.write(offset: UInt64(offset), bytes: bytes, fua: true)
                vm.model.replaceSubrange(offset..<offset + length, with: bytes)
            }
        }
        await cut.integration.halt()
        let copy = try vm.crashCopy()

        let recovered = try VMDisk(directory: copy)
        guard case .merged(_, let abandoned) = recovered.recovery else {
            Issue.record("expected a merge, got \(recovered.recovery)")
            return
        }
        #expect(abandoned == vm.scratch.file("r.qcow2"), "the unfinished record is named and removed")
        #expect(!Files.exists("\(copy)/\(VMDisk.journalName)") && !Files.exists("\(copy)/\(VMDisk.nextName)"))
        try writeFile(vm.scratch.file("expected.raw"), vm.model)
        let compare = try runTool(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", vm.scratch.file("expected.raw"), "\(copy)/overlay.qcow2"])
        #expect(compare.status == 0, "after \(operations) requests: \(compare.output)")
        try expectCrashConsistent("\(copy)/overlay.qcow2")
        // B never changes.
        let base = try runTool(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", vm.scratch.file("b.raw"), vm.scratch.file("b.qcow2")])
        #expect(base.status == 0)
        // The recovered disk serves the same content and integrates again.
        let again = try recovered.cut(recordPath: "\(copy)/r2.qcow2", previousRecord: nil, full: true)
        _ = try await recovered.finish(again)
        let r2 = try runTool(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", vm.scratch.file("expected.raw"), "\(copy)/r2.qcow2"])
        #expect(r2.status == 0, "\(r2.output)")
    }

    @Test func aCompletedCheckpointLeavesNoJournalAndARecordOfTheSwitchOver() async throws {
        var vm = try VMDir(seed: 3)
        let atSwitchOver = vm.model
        let disk = try VMDisk(directory: vm.directory)
        let cut = try disk.cut(recordPath: vm.scratch.file("r1.qcow2"), previousRecord: nil, full: false)
        #expect(!cut.incremental, "no previous record: full")
        #expect(Files.exists("\(vm.directory)/\(VMDisk.journalName)"))
        try await disk.disk.write(offset: 0, bytes: [9, 9, 9])
        vm.model.replaceSubrange(0..<3, with: [9, 9, 9])
        _ = try await disk.finish(cut)
        #expect(!Files.exists("\(vm.directory)/\(VMDisk.journalName)") && !Files.exists("\(vm.directory)/\(VMDisk.nextName)"))
        try writeFile(vm.scratch.file("r1.raw"), atSwitchOver)
        try expectSameContent(expected: vm.scratch.file("r1.raw"), image: vm.scratch.file("r1.qcow2"))

        // The next cut over the record just made is incremental; a forced one is not.
        try await disk.disk.write(offset: 70000, bytes: [1])
        let second = try disk.cut(recordPath: vm.scratch.file("r2.qcow2"), previousRecord: vm.scratch.file("r1.qcow2"), full: false)
        #expect(second.incremental && second.backing == vm.scratch.file("r1.qcow2"))
        let stats = try await disk.finish(second)
        #expect(stats.recordClusters == 2, "clusters 0 and 17 were written this epoch: \(stats)")
        let third = try disk.cut(recordPath: vm.scratch.file("r3.qcow2"), previousRecord: vm.scratch.file("r2.qcow2"), full: true)
        #expect(!third.incremental)
        _ = try await disk.finish(third)
        // Reopening a clean directory recovers nothing.
        #expect(try VMDisk(directory: vm.directory).recovery == .none)
    }
}
