import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// `readWithoutWaiting` and `overwriteWithoutAllocating`: the event-loop
/// read and write of the disk manager. They must do exactly what `read` and
/// `write` do, and give up, having done nothing, rather than read metadata
/// the cache does not hold or change a table.
@Suite struct NonBlockingIOTests {
    @Test func servesCachedDataAndGivesUpOnUncachedMetadata() throws {
        let scratch = try Scratch()
        let base = scratch.file("base.raw")
        let baseBytes = pattern(4 << 20, seed: 7)
        try Data(baseBytes).write(to: URL(fileURLWithPath: base))
        do {
            let top = try QCOW2Image.create(path: scratch.file("top.qcow2"), virtualSize: 4 << 20, clusterBits: 16, backingFile: "base.raw", backingFormat: "raw")
            try top.write(pattern(65536 * 3, seed: 9), at: 65536 * 5 + 100)
            try top.flush()
        }
        let top = try QCOW2Image.open(path: scratch.file("top.qcow2"))
        let cases: [(offset: UInt64, count: Int)] = [(65536 * 5 + 100, 4096), (65536 * 5, 65536 * 4), (0, 8192), (65536 * 40, 65536), (4 << 20 - 512, 512)]
        // Just opened: no L2 table is cached, so a read that needs one gives up.
        var buffer = [UInt8](repeating: 0, count: 4096)
        let first = try buffer.withUnsafeMutableBytes { try top.readWithoutWaiting(into: $0, at: 65536 * 5 + 100) }
        #expect(!first, "the L2 table is not cached yet")
        for (offset, count) in cases {
            let expected = try top.read(at: offset, count: count)  // loads the L2 table
            var got = [UInt8](repeating: 0xAA, count: count)
            let served = try got.withUnsafeMutableBytes { try top.readWithoutWaiting(into: $0, at: offset) }
            // Everything was just read, so the page cache holds it.
            #expect(served, "\(count) at \(offset)")
            #expect(got == expected, "\(count) at \(offset)")
        }
        // Unallocated clusters come from the raw backing file, unchanged.
        #expect(Array(try top.read(at: 0, count: 8192)) == Array(baseBytes[0..<8192]))
    }

    @Test func overwritesOnlyDataClustersWithCachedTables() throws {
        let scratch = try Scratch()
        let size = 2 << 20, cluster = 65536
        var model = pattern(size, seed: 11)
        try Data(model).write(to: URL(fileURLWithPath: scratch.file("base.raw")))
        do {
            let top = try QCOW2Image.create(path: scratch.file("top.qcow2"), virtualSize: UInt64(size), clusterBits: 16, backingFile: "base.raw", backingFormat: "raw")
            // Clusters 2, 3 and 4 held by the top layer; 8 a zero cluster.
            let held = pattern(cluster * 3, seed: 12)
            try top.write(held, at: UInt64(cluster * 2))
            model.replaceSubrange(cluster * 2..<cluster * 5, with: held)
            try top.writeZeroes(at: UInt64(cluster * 8), count: UInt64(cluster))
            model.replaceSubrange(cluster * 8..<cluster * 9, with: repeatElement(0, count: cluster))
            try top.flush()
        }
        let path = scratch.file("top.qcow2")
        let top = try QCOW2Image.open(path: path, writable: true)
        func overwrite(_ offset: Int, _ count: Int, seed: UInt8) throws -> Bool {
            let bytes = pattern(count, seed: seed)
            let done = try bytes.withUnsafeBytes { try top.overwriteWithoutAllocating($0, at: UInt64(offset)) }
            if done { model.replaceSubrange(offset..<offset + count, with: bytes) }
            return done
        }
        // Just opened: the L2 table is not cached.
        #expect(try !overwrite(cluster * 2 + 100, 4096, seed: 1), "the L2 table is not cached yet")
        _ = try top.read(at: 0, count: 512)
        #expect(try overwrite(cluster * 2 + 100, 4096, seed: 2))
        #expect(try overwrite(cluster * 3 - 1000, 5000, seed: 3), "across two held clusters")
        #expect(try overwrite(cluster * 2, cluster * 3, seed: 4), "all three")
        #expect(try !overwrite(cluster * 5 - 10, 4096, seed: 5), "the second cluster is not held: it would allocate")
        #expect(try !overwrite(cluster * 0 + 7, 512, seed: 6), "unallocated: copy-on-write from the backing file")
        #expect(try !overwrite(cluster * 8 + 4096, 4096, seed: 7), "a zero cluster has no data to overwrite")
        #expect(try top.allocatedClusterCount() == 4, "nothing was allocated")
        #expect(try top.read(at: 0, count: size) == model)
        try top.flush()
        // What reached the file is what the model says, by QEMU's reading too.
        let reopened = try QCOW2Image.open(path: path)
        #expect(try reopened.read(at: 0, count: size) == model)
        try must(["qemu-img", "check", "-q", "-f", "qcow2", path])
        let dump = scratch.file("dump.raw")
        try must(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", path, dump])
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: dump))) == model)
    }
}
