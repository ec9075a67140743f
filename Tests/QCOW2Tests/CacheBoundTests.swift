import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// The engine's metadata caches (refcount blocks, L2 tables) stay within
/// their byte budgets on an image with many more of them than the budget
/// holds, and what the engine reads and writes stays right.
@Suite struct CacheBoundTests {
    /// (cached refcount blocks, cached L2 tables, dirty ones of each).
    func cacheCounts(_ image: QCOW2Image) -> (refBlocks: Int, l2: Int, dirty: Int) {
        image.engine.withLock { engine in
            (engine.refBlocks.count, engine.l2Cache.count, engine.refBlocks.dirtyEntries.count + engine.l2Cache.dirtyEntries.count)
        }
    }

    func setBudgets(_ image: QCOW2Image, refBlocks: UInt64, l2: UInt64) {
        image.engine.withLock { engine in
            engine.refBlocks.budget = refBlocks
            engine.l2Cache.budget = l2
        }
    }

    /// 512-byte clusters with 64-bit refcounts: one refcount block covers
    /// 64 clusters (32 KiB of host file), one L2 table 64 guest clusters.
    /// Budgets of 8 blocks and 4 tables against about 100 of each.
    @Test func budgetsHoldOnAnImageWithManyMoreBlocksThanTheCap() throws {
        let scratch = try Scratch()
        let path = scratch.file("c.qcow2")
        let size = 3 << 20
        let budgetBlocks = 8, budgetTables = 4
        var image = try QCOW2Image.create(path: path, virtualSize: UInt64(size), clusterBits: 9, refcountOrder: 6)
        setBudgets(image, refBlocks: UInt64(budgetBlocks) * 512, l2: UInt64(budgetTables) * 512)
        // The whole disk written first: about 100 refcount blocks and 100
        // L2 tables, then random writes, discards and zeroes over it.
        var model = pattern(size, seed: 3)
        for offset in stride(from: 0, to: size, by: 64 << 10) {
            try image.write(Array(model[offset..<(offset + (64 << 10))]), at: UInt64(offset))
        }
        var rng = SeededRandom(seed: 15)
        var maxAfterFlush = (refBlocks: 0, l2: 0)
        for step in 0..<200 {
            let count = Int.random(in: 1...6000, using: &rng)
            let offset = Int.random(in: 0...(size - count), using: &rng)
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<7:
                let data = pattern(count, seed: UInt8(truncatingIfNeeded: step))
                try image.write(data, at: UInt64(offset))
                model.replaceSubrange(offset..<(offset + count), with: data)
            case 7:
                try image.discard(at: UInt64(offset), count: UInt64(count))
                var c = (offset + 511) / 512
                while (c + 1) * 512 <= offset + count {
                    model.replaceSubrange((c * 512)..<((c + 1) * 512), with: [UInt8](repeating: 0, count: 512))
                    c += 1
                }
            default:
                try image.writeZeroes(at: UInt64(offset), count: UInt64(count))
                model.replaceSubrange(offset..<(offset + count), with: [UInt8](repeating: 0, count: count))
            }
            if step % 10 == 9 {
                try image.flush()
                let counts = cacheCounts(image)
                #expect(counts.dirty == 0)
                #expect(counts.refBlocks <= budgetBlocks && counts.l2 <= budgetTables, "step \(step): \(counts)")
                maxAfterFlush = (max(maxAfterFlush.refBlocks, counts.refBlocks), max(maxAfterFlush.l2, counts.l2))
            }
        }
        try image.flush()
        let refcountBlocks = image.engine.withLock { engine in engine.refTable.filter { $0 != 0 }.count }
        let l2Tables = image.engine.withLock { engine in engine.l1.filter { $0 != 0 }.count }
        #expect(refcountBlocks > 10 * budgetBlocks, "only \(refcountBlocks) refcount blocks")
        #expect(l2Tables > 10 * budgetTables, "only \(l2Tables) L2 tables")
        #expect(maxAfterFlush.refBlocks > 0)

        // Reopened with the same budgets: a whole-disk read, cluster by
        // cluster, never holds more than the budgets and matches the model.
        image = try QCOW2Image.open(path: path)
        setBudgets(image, refBlocks: UInt64(budgetBlocks) * 512, l2: UInt64(budgetTables) * 512)
        var offset = 0
        while offset < size {
            let n = min(64 << 10, size - offset)
            #expect(try image.read(at: UInt64(offset), count: n) == Array(model[offset..<(offset + n)]), "at \(offset)")
            let counts = cacheCounts(image)
            #expect(counts.l2 <= budgetTables, "at \(offset): \(counts)")
            offset += n
        }
        try expectClean(path)
        try writeFile(scratch.file("expected.raw"), model)
        try expectSameContent(expected: scratch.file("expected.raw"), image: path)
    }

    /// The refcount block as bytes: every width reads back what was set,
    /// and the bytes are what the codec encodes.
    @Test(arguments: 0...6)
    func refcountBlockEntriesMatchTheCodec(order: Int) {
        var rng = SeededRandom(seed: UInt64(order))
        let block = RefcountBlock(bytes: [UInt8](repeating: 0, count: 512), order: UInt32(order), dirty: false)
        let max: UInt64 = order == 6 ? UInt64.max : (1 << (UInt64(1) << UInt64(order))) - 1
        var expected = [UInt64](repeating: 0, count: block.count)
        for _ in 0..<500 {
            let i = Int.random(in: 0..<block.count, using: &rng)
            let v = UInt64.random(in: 0...max, using: &rng)
            block[i] = v
            expected[i] = v
        }
        #expect(block.count == (512 * 8) >> order)
        #expect((0..<block.count).map { block[$0] } == expected)
        #expect(block.bytes == QCOW2Entries.encodeRefcounts(expected, order: UInt32(order)))
    }
}
