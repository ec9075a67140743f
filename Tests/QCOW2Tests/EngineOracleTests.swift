import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// The engine against QEMU's own tools: every image it writes passes
/// `qemu-img check` and compares equal to the expected content.
@Suite struct EngineOracleTests {
    @Test(arguments: [(UInt32(2), UInt32(16)), (3, 16), (3, 9), (3, 12), (2, 12), (3, 21)])
    func writesReadBackAndPassQemuCheck(version: UInt32, clusterBits: UInt32) throws {
        let scratch = try Scratch()
        let path = scratch.file("a.qcow2")
        let size: UInt64 = 8 << 20
        let image = try QCOW2Image.create(path: path, virtualSize: size, clusterBits: clusterBits, version: version)
        var expected = [UInt8](repeating: 0, count: Int(size))
        var rng = SeededRandom(seed: UInt64(version) << 8 | UInt64(clusterBits))
        for i in 0..<40 {
            let count = Int.random(in: 1...70_000, using: &rng)
            let offset = Int.random(in: 0...(Int(size) - count), using: &rng)
            let data = pattern(count, seed: UInt8(i))
            try image.write(data, at: UInt64(offset))
            expected.replaceSubrange(offset..<(offset + count), with: data)
        }
        #expect(try image.read(at: 0, count: Int(size)) == expected)
        try image.flush()
        try expectClean(path)
        try writeFile(scratch.file("expected.raw"), expected)
        try expectSameContent(expected: scratch.file("expected.raw"), image: path)
        // A fresh open reads the same bytes.
        let reopened = try QCOW2Image.open(path: path)
        #expect(try reopened.read(at: 0, count: Int(size)) == expected)
    }

    @Test func readsImagesWrittenByQemu() throws {
        let scratch = try Scratch()
        let base = scratch.file("base.qcow2")
        let top = scratch.file("top.qcow2")
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", base, "4M"])
        try must(["qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 64k", "-c", "write -P 0xbb 1M 5000", "-c", "write -z 8k 4k", base])
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top])
        try must(["qemu-io", "-f", "qcow2", "-c", "write -P 0xcc 4k 1k", "-c", "write -z 1M 512", "-c", "write -P 0xdd 3M 64k", top])
        let image = try QCOW2Image.open(path: top)
        #expect(image.chain.count == 2)
        let all = try image.read(at: 0, count: 4 << 20)
        var expected = [UInt8](repeating: 0, count: 4 << 20)
        func fill(_ offset: Int, _ count: Int, _ value: UInt8) {
            for i in offset..<(offset + count) { expected[i] = value }
        }
        fill(0, 65536, 0xaa); fill(1 << 20, 5000, 0xbb); fill(8192, 4096, 0)
        fill(4096, 1024, 0xcc); fill(1 << 20, 512, 0); fill(3 << 20, 65536, 0xdd)
        #expect(all == expected)
    }

    @Test func overlayPartialWritesFillFromBacking() throws {
        let scratch = try Scratch()
        let base = scratch.file("base.raw")
        var expected = pattern(1 << 20, seed: 9)
        try writeFile(base, expected)
        let top = scratch.file("top.qcow2")
        let image = try QCOW2Image.createOverlay(path: top, backingFile: "base.raw", clusterBits: 12)
        #expect(image.virtualSize == 1 << 20)
        let data = [UInt8](repeating: 0x5a, count: 100)
        try image.write(data, at: 4096 + 1000)
        expected.replaceSubrange(5096..<5196, with: data)
        try image.writeZeroes(at: 20_000, count: 10_000)
        expected.replaceSubrange(20_000..<30_000, with: [UInt8](repeating: 0, count: 10_000))
        try image.flush()
        try expectClean(top)
        try writeFile(scratch.file("expected.raw"), expected)
        try expectSameContent(expected: scratch.file("expected.raw"), image: top)
        // The written cluster holds the backing bytes around the write.
        guard case .data(let host) = try image.clusterState(1) else {
            Issue.record("cluster 1 not allocated")
            return
        }
        let file = try readFile(top)
        #expect(Array(file[Int(host)..<Int(host) + 4096]) == Array(expected[4096..<8192]))
        let info = try must(["qemu-img", "info", top])
        #expect(info.contains("backing file format: raw"))
    }

    @Test func refcountTableGrowsAndStaysConsistent() throws {
        let scratch = try Scratch()
        let path = scratch.file("grow.qcow2")
        // 512-byte clusters with 64-bit refcounts: one refcount block covers
        // 64 clusters and the first table 64 blocks, so 2 MiB of host file
        // forces the table to move.
        let image = try QCOW2Image.create(path: path, virtualSize: 4 << 20, clusterBits: 9, refcountOrder: 6)
        let before = image.header.refcountTableOffset
        let data = pattern(3 << 20, seed: 3)
        for chunk in stride(from: 0, to: data.count, by: 256 << 10) {
            try image.write(Array(data[chunk..<(chunk + (256 << 10))]), at: UInt64(chunk))
            try image.flush()
        }
        #expect(image.header.refcountTableOffset != before)
        try expectClean(path)
        var expected = data + [UInt8](repeating: 0, count: 1 << 20)
        #expect(try image.read(at: 0, count: 4 << 20) == expected)
        try image.discard(at: 0, count: 1 << 20)
        expected.replaceSubrange(0..<(1 << 20), with: [UInt8](repeating: 0, count: 1 << 20))
        try image.flush()
        try expectClean(path)
        try writeFile(scratch.file("expected.raw"), expected)
        try expectSameContent(expected: scratch.file("expected.raw"), image: path)
    }

    @Test(arguments: [UInt32(0), 1, 3, 5])
    func unusualRefcountWidthsWrittenByQemu(order: UInt32) throws {
        let scratch = try Scratch()
        let path = scratch.file("r.qcow2")
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "refcount_bits=\(1 << order),cluster_size=4096", path, "2M"])
        let image = try QCOW2Image.open(path: path, writable: true)
        let data = pattern(300_000, seed: UInt8(order))
        try image.write(data, at: 12345)
        try image.discard(at: 0, count: 100_000)
        try image.flush()
        try expectClean(path)
        var expected = [UInt8](repeating: 0, count: 2 << 20)
        expected.replaceSubrange(12345..<(12345 + data.count), with: data)
        for c in 0..<(100_000 / 4096) { expected.replaceSubrange((c * 4096)..<((c + 1) * 4096), with: [UInt8](repeating: 0, count: 4096)) }
        try writeFile(scratch.file("expected.raw"), expected)
        try expectSameContent(expected: scratch.file("expected.raw"), image: path)
    }
}
