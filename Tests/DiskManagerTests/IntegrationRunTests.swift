import DiskManager
import Foundation
import QCOW2
import TestSupport
import Testing

/// The integration protocol run on real qcow2 files while requests arrive:
/// the guest's view stays exact, U ⊕ B ends as the guest's disk, the record
/// holds the switch-over content, and qemu-img accepts and agrees with all.
@Suite struct IntegrationRunTests {
    /// B (random content) → T (random writes): the disk at the cut.
    struct Fixture {
        let scratch: Scratch
        let size: Int
        let clusterBits: UInt32
        var model: [UInt8]
        let disk: ManagedDisk

        init(size: Int = 4 << 20, clusterBits: UInt32 = 12, seed: UInt64) throws {
            scratch = try Scratch()
            self.size = size
            self.clusterBits = clusterBits
            var random = SeededRandom(seed: seed)
            model = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
            // B: every byte set, written by QEMU's own tools.
            try writeFile(scratch.file("b.raw"), model)
            try must(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=\(1 << clusterBits)",
                      scratch.file("b.raw"), scratch.file("b.qcow2")])
            let t = try QCOW2Image.createOverlay(path: scratch.file("t.qcow2"), backingFile: scratch.file("b.qcow2"), clusterBits: clusterBits)
            // T: a third of the clusters rewritten, some partially.
            for _ in 0..<(size >> clusterBits) / 3 {
                let offset = Int.random(in: 0..<size - 1, using: &random)
                let length = min(Int.random(in: 1...(3 << clusterBits), using: &random), size - offset)
                let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
                try t.write(bytes, at: UInt64(offset))
                model.replaceSubrange(offset..<offset + length, with: bytes)
            }
            try t.flush()
            disk = ManagedDisk(top: t)
        }

        func newU(_ name: String = "u.qcow2") throws -> QCOW2Image {
            try QCOW2Image.createOverlay(path: scratch.file(name), backingFile: scratch.file("b.qcow2"), clusterBits: clusterBits)
        }

        func newRecord(_ name: String, backing: String) throws -> QCOW2Image {
            try QCOW2Image.createOverlay(path: scratch.file(name), backingFile: backing, clusterBits: clusterBits)
        }

        /// Writes the model to a raw file and asks qemu-img whether `image` holds the same.
        func expectImage(_ image: String, equals content: [UInt8], _ name: String) throws {
            let raw = scratch.file("\(name).expected.raw")
            try writeFile(raw, content)
            let compare = try runTool(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, image])
            #expect(compare.status == 0, "\(name): \(compare.output)")
            let check = try runTool(["qemu-img", "check", "-f", "qcow2", image])
            #expect(check.status == 0, "\(name): \(check.output)")
        }
    }

    /// One guest: random reads (checked against the model) and writes,
    /// request by request, while the sweep runs between them.
    func guest(_ disk: ManagedDisk, model: inout [UInt8], seed: UInt64, operations: Int, clusterSize: Int) async throws {
        var random = SeededRandom(seed: seed)
        let size = model.count
        for _ in 0..<operations {
            let offset = Int.random(in: 0..<size - 1, using: &random)
            let length = min(Int.random(in: 1...(3 * clusterSize), using: &random), size - offset)
            switch Int.random(in: 0..<10, using: &random) {
            case 0..<4:
                let got = try await disk.read(offset: UInt64(offset), length: length)
                #expect(got == Array(model[offset..<offset + length]), "read \(length) at \(offset)")
            case 4:
                try await disk.writeZeroes(offset: UInt64(offset), length: UInt64(length))
                model.replaceSubrange(offset..<offset + length, with: repeatElement(0, count: length))
            case 5:
                try await disk.flush()
            default:
                let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
                try await disk.write(offset: UInt64(offset), bytes: bytes)
                model.replaceSubrange(offset..<offset + length, with: bytes)
            }
        }
    }

    @Test(arguments: [UInt64(1), 2, 3, 4])
    func fullRecordWhileTheGuestReadsAndWrites(seed: UInt64) async throws {
        var f = try Fixture(seed: seed)
        let atSwitchOver = f.model
        let u = try f.newU()
        let record = try f.newRecord("r1.qcow2", backing: f.scratch.file("b.qcow2"))
        let integration = try f.disk.cut(u: u, record: record, incremental: false)
        #expect(f.disk.isIntegrating)
        try await guest(f.disk, model: &f.model, seed: seed &+ 100, operations: 400, clusterSize: 1 << Int(f.clusterBits))
        let stats = try await integration.wait()
        f.disk.settle()
        #expect(!f.disk.isIntegrating)
        #expect(stats.recordClusters == stats.switchOverClusters, "a full record holds all of S0")
        #expect(stats.switchOverClusters > 0)

        // Plain mode on U afterwards: writes land in U.
        try await f.disk.write(offset: 4096, bytes: [1, 2, 3])
        f.model.replaceSubrange(4096..<4099, with: [1, 2, 3])
        try await f.disk.flush()
        #expect(f.disk.top === u)

        try f.expectImage(f.scratch.file("u.qcow2"), equals: f.model, "u")
        try f.expectImage(f.scratch.file("r1.qcow2"), equals: atSwitchOver, "r1")
    }

    @Test func incrementalRecordHoldsOnlyTheEpochsClusters() async throws {
        var f = try Fixture(seed: 9)
        let clusterSize = 1 << Int(f.clusterBits)
        // Checkpoint 1: full.
        let first = f.model
        let i1 = try f.disk.cut(u: try f.newU("u1.qcow2"), record: try f.newRecord("r1.qcow2", backing: f.scratch.file("b.qcow2")), incremental: false)
        try await guest(f.disk, model: &f.model, seed: 10, operations: 200, clusterSize: clusterSize)
        _ = try await i1.wait()
        f.disk.settle()
        // The epoch: a few writes in plain mode.
        try await guest(f.disk, model: &f.model, seed: 11, operations: 60, clusterSize: clusterSize)
        // Checkpoint 2: incremental over record 1.
        let second = f.model
        let r2 = try f.newRecord("r2.qcow2", backing: f.scratch.file("r1.qcow2"))
        let u2 = try QCOW2Image.createOverlay(path: f.scratch.file("u2.qcow2"), backingFile: f.scratch.file("b.qcow2"), clusterBits: f.clusterBits)
        let i2 = try f.disk.cut(u: u2, record: r2, incremental: true)
        try await guest(f.disk, model: &f.model, seed: 12, operations: 200, clusterSize: clusterSize)
        let stats = try await i2.wait()
        f.disk.settle()
        #expect(stats.recordClusters < stats.switchOverClusters, "only this epoch's clusters: \(stats)")
        #expect(stats.recordClusters > 0)

        try await f.disk.flush()  // the engine keeps metadata in memory until a flush
        try f.expectImage(f.scratch.file("r1.qcow2"), equals: first, "r1")
        try f.expectImage(f.scratch.file("r2.qcow2"), equals: second, "r2")
        try f.expectImage(f.scratch.file("u2.qcow2"), equals: f.model, "u2")
    }

    /// Several guests at once on disjoint thirds of the disk: requests from
    /// many threads are serialised by the integration's thread.
    @Test func concurrentRequestsDuringIntegration() async throws {
        let f = try Fixture(size: 6 << 20, seed: 21)
        let atSwitchOver = f.model
        let integration = try f.disk.cut(u: try f.newU(), record: try f.newRecord("r.qcow2", backing: f.scratch.file("b.qcow2")), incremental: false)
        let third = f.model.count / 3
        let disk = f.disk
        let results = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
            for part in 0..<3 {
                let slice = Array(f.model[part * third..<(part + 1) * third])
                group.addTask {
                    var random = SeededRandom(seed: UInt64(30 + part))
                    var local = slice
                    for _ in 0..<150 {
                        let offset = Int.random(in: 0..<third - 1, using: &random)
                        let length = min(Int.random(in: 1...20000, using: &random), third - offset)
                        let at = UInt64(part * third + offset)
                        if Bool.random(using: &random) {
                            let got = try await disk.read(offset: at, length: length)
                            #expect(got == Array(local[offset..<offset + length]))
                        } else {
                            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
                            try await disk.write(offset: at, bytes: bytes)
                            local.replaceSubrange(offset..<offset + length, with: bytes)
                        }
                    }
                    return (part, local)
                }
            }
            var all: [(Int, [UInt8])] = []
            for try await r in group { all.append(r) }
            return all
        }
        _ = try await integration.wait()
        try await disk.flush()
        var expected = f.model
        for (part, bytes) in results { expected.replaceSubrange(part * third..<(part + 1) * third, with: bytes) }
        try f.expectImage(f.scratch.file("u.qcow2"), equals: expected, "u")
        try f.expectImage(f.scratch.file("r.qcow2"), equals: atSwitchOver, "r")
    }

    @Test func badRequestsAreRefusedWithoutHarm() async throws {
        let f = try Fixture(size: 1 << 20, seed: 5)
        await #expect(throws: DiskManagerError.self) { try await f.disk.read(offset: UInt64(1 << 20), length: 1) }
        await #expect(throws: DiskManagerError.self) { try await f.disk.write(offset: UInt64.max - 1, bytes: [1, 2, 3]) }
        let integration = try f.disk.cut(u: try f.newU(), record: nil, incremental: false)
        #expect(throws: DiskManagerError.self) { _ = try f.disk.cut(u: try f.newU("u2.qcow2"), record: nil, incremental: false) }
        await #expect(throws: DiskManagerError.self) { try await f.disk.read(offset: UInt64(1 << 20) - 10, length: 11) }
        _ = try await integration.wait()
        f.disk.settle()
        try await f.disk.flush()
        // A U of another cluster size does not fit T.
        let other = try QCOW2Image.createOverlay(path: f.scratch.file("u3.qcow2"), backingFile: f.scratch.file("b.qcow2"), clusterBits: 16)
        #expect(throws: DiskManagerError.self) { _ = try f.disk.cut(u: other, record: nil, incremental: false) }
        try f.expectImage(f.scratch.file("u.qcow2"), equals: f.model, "u")
    }
}
