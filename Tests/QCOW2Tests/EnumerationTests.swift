import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// `nextAllocatedCluster` — the sweep's "T's next allocated cluster".
@Suite struct EnumerationTests {
    @Test func ascendingOrderAndOnlyThisLayer() throws {
        let scratch = try Scratch()
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", scratch.file("base.qcow2"), "4G"])
        try must(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", scratch.file("base.qcow2")])
        let top = try QCOW2Image.create(path: scratch.file("top.qcow2"), virtualSize: 4 << 30, clusterBits: 12, backingFile: "base.qcow2")
        // Clusters in several L2 tables (one L2 table maps 2 MiB here).
        let targets: [UInt64] = [700_000, 3, 512, 511, 200_000, 5]
        for g in targets { try top.write([9], at: g * 4096 + 17) }
        try top.writeZeroes(at: 100 * 4096, count: 4096)
        var seen: [UInt64] = []
        var g: UInt64 = 0
        while let next = try top.nextAllocatedCluster(atOrAfter: g) {
            seen.append(next)
            g = next + 1
        }
        #expect(seen == (targets + [100]).sorted())
        #expect(try top.nextAllocatedCluster(atOrAfter: 700_001) == nil)
        #expect(try top.allocatedClusterCount() == 7)
        #expect(try top.clusterState(100) == .zero(host: nil))
    }

    /// Trap 1 of DESIGN.md: a cluster allocated above the cursor after the
    /// sweep began must be found; one allocated below it is not revisited.
    @Test func seesClustersAllocatedDuringTheSweep() throws {
        let scratch = try Scratch()
        let image = try QCOW2Image.create(path: scratch.file("t.qcow2"), virtualSize: 64 << 20, clusterBits: 16)
        for g: UInt64 in [2, 10, 20] { try image.write(pattern(65536, seed: UInt8(g)), at: g << 16) }
        var swept: [UInt64] = []
        var cursor: UInt64 = 0
        while let next = try image.nextAllocatedCluster(atOrAfter: cursor) {
            swept.append(next)
            cursor = next + 1
            if next == 10 {
                // New_VM writes above the cursor (new L2 table too) and below it.
                try image.write([1, 2, 3], at: (15 << 16) + 5)
                try image.write([4], at: (900 << 16))
                try image.write([5], at: (1 << 16))
            }
        }
        #expect(swept == [2, 10, 15, 20, 900])
    }

    /// Concurrent writers and a sweeping reader on one image.
    @Test func concurrentWritersAndSweep() async throws {
        let scratch = try Scratch()
        let path = scratch.file("c.qcow2")
        let image = try QCOW2Image.create(path: path, virtualSize: 32 << 20, clusterBits: 12)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<4 {
                group.addTask {
                    for i in 0..<200 {
                        let g = UInt64(i * 4 + w)
                        try image.write([UInt8](repeating: UInt8(w + 1), count: 4096), at: g * 4096)
                    }
                }
            }
            group.addTask {
                var cursor: UInt64 = 0
                while let next = try image.nextAllocatedCluster(atOrAfter: cursor) { cursor = next + 1 }
            }
            try await group.waitForAll()
        }
        try image.flush()
        #expect(try image.allocatedClusterCount() == 800)
        for g in stride(from: UInt64(0), to: 800, by: 37) {
            #expect(try image.read(at: g * 4096, count: 4096) == [UInt8](repeating: UInt8(g % 4 + 1), count: 4096))
        }
        try expectClean(path)
    }
}
