import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// `readWithoutWaiting`: the event-loop read of the disk manager. It must
/// return exactly what `read` returns, and give up rather than touch the
/// disk for metadata the cache does not hold.
@Suite struct NonBlockingReadTests {
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
}
