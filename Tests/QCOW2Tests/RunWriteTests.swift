import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// A write over many whole clusters goes to the file in as few writes as
/// its host clusters allow: one per run of host clusters that follow each
/// other, new or held. What it wrote reads back, through cevm and through
/// QEMU, and the image passes `qemu-img check`.
@Suite struct RunWriteTests {
    final class Writes: @unchecked Sendable {
        let lock = NSLock()
        var sizes: [Int] = []
        func add(_ event: IOEvent) {
            guard case .write(_, let bytes) = event else { return }
            lock.lock()
            sizes.append(bytes.count)
            lock.unlock()
        }
        func take() -> [Int] {
            lock.lock()
            defer { lock.unlock() }
            let out = sizes
            sizes = []
            return out
        }
    }

    @Test func wholeClustersGoOutInRuns() throws {
        let scratch = try Scratch()
        let path = scratch.file("runs.qcow2")
        let cluster = 4096
        let image = try QCOW2Image.create(path: path, virtualSize: 1 << 20, clusterBits: 12)
        let writes = Writes()
        image.setObserver { writes.add($0) }

        // Ten new clusters: taken one after another, written at once.
        let first = pattern(10 * cluster, seed: 1)
        try image.write(first, at: 0)
        #expect(writes.take() == [10 * cluster])
        try image.flush()
        _ = writes.take()

        // Clusters 2...12: 2...9 held (contiguous), 10...12 new and taken
        // after the L2 table that the first flush placed behind cluster 9.
        let second = pattern(11 * cluster, seed: 2)
        try image.write(second, at: UInt64(2 * cluster))
        #expect(writes.take() == [8 * cluster, 3 * cluster])

        // A partial cluster between two runs splits them, and is written alone.
        let third = pattern(3 * cluster + 100, seed: 3)
        try image.write(third, at: UInt64(20 * cluster))
        #expect(writes.take() == [3 * cluster, cluster])

        // Zero clusters are rewritten as data (a new cluster each, in one run).
        try image.writeZeroes(at: UInt64(40 * cluster), count: UInt64(4 * cluster))
        try image.flush()
        _ = writes.take()
        let fourth = pattern(4 * cluster, seed: 4)
        try image.write(fourth, at: UInt64(40 * cluster))
        #expect(writes.take() == [4 * cluster])
        try image.flush()

        var expected = [UInt8](repeating: 0, count: 1 << 20)
        expected.replaceSubrange(0..<(10 * cluster), with: first)
        expected.replaceSubrange((2 * cluster)..<(13 * cluster), with: second)
        expected.replaceSubrange((20 * cluster)..<(23 * cluster + 100), with: third)
        expected.replaceSubrange((40 * cluster)..<(44 * cluster), with: fourth)
        var back = [UInt8](repeating: 0xee, count: 1 << 20)
        try back.withUnsafeMutableBytes { try image.read(into: $0, at: 0) }
        #expect(back == expected)
        try must(["qemu-img", "check", "-q", "-f", "qcow2", path])
        let raw = scratch.file("runs.raw")
        try must(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw])
        #expect(try Data(contentsOf: URL(fileURLWithPath: raw)) == Data(expected))
    }
}
