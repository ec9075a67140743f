import DiskTools
import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// Seeded random write / zero / discard / flush / reopen sequences against a
/// byte-array model, across cluster sizes and chain depths. Every final
/// image is checked by qemu-img check, qemu-img compare and libqcow.
@Suite struct RandomModelTests {
    /// depth 0: no backing; 1: raw base; 2: raw base + qcow2 middle written
    /// by QEMU; 3: qcow2 base + qcow2 middle, both written by QEMU.
    @Test(arguments: [(UInt32(9), 0), (12, 1), (16, 2), (12, 3), (9, 2), (16, 0)])
    func randomOperationsMatchModel(clusterBits: UInt32, depth: Int) throws {
        let scratch = try Scratch()
        let size = 2 << 20
        let seed = UInt64(clusterBits) * 100 + UInt64(depth)
        var rng = SeededRandom(seed: seed)
        var below = [UInt8](repeating: 0, count: size)
        var backingName: String?
        if depth == 1 || depth == 2 {
            below = pattern(size, seed: 77)
            try writeFile(scratch.file("base.raw"), below)
            backingName = "base.raw"
        }
        if depth == 3 {
            try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", scratch.file("base.qcow2"), "2M"])
            try must(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x12 1536k 100k", scratch.file("base.qcow2")])
            backingName = "base.qcow2"
        }
        if depth >= 2 {
            let mid = scratch.file("mid.qcow2")
            try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", backingName ?? "", "-F", depth == 2 ? "raw" : "qcow2", mid])
            try must(["qemu-io", "-f", "qcow2", "-c", "write -P 0x21 100k 300k", "-c", "write -z 900k 70k", "-c", "discard 0 64k", mid])
            backingName = "mid.qcow2"
        }
        if depth >= 2 {
            try must(["qemu-img", "convert", "-O", "raw", scratch.file(backingName ?? ""), scratch.file("below.raw")])
            below = try readFile(scratch.file("below.raw"))
        }
        let path = scratch.file("top.qcow2")
        var image = try QCOW2Image.create(path: path, virtualSize: UInt64(size), clusterBits: clusterBits, backingFile: backingName)
        #expect(image.chain.count == [1, 2, 3, 3][depth])
        var model = below
        let cs = 1 << Int(clusterBits)
        for step in 0..<120 {
            let choice = Int.random(in: 0..<100, using: &rng)
            let count = Int.random(in: 1...(3 * cs + 1000), using: &rng)
            let offset = Int.random(in: 0...(size - count), using: &rng)
            switch choice {
            case 0..<60:
                let data = pattern(count, seed: UInt8(truncatingIfNeeded: step))
                try image.write(data, at: UInt64(offset))
                model.replaceSubrange(offset..<(offset + count), with: data)
            case 60..<75:
                try image.writeZeroes(at: UInt64(offset), count: UInt64(count))
                model.replaceSubrange(offset..<(offset + count), with: [UInt8](repeating: 0, count: count))
            case 75..<88:
                try image.discard(at: UInt64(offset), count: UInt64(count))
                var c = (offset + cs - 1) / cs
                while (c + 1) * cs <= offset + count {
                    model.replaceSubrange((c * cs)..<((c + 1) * cs), with: below[(c * cs)..<((c + 1) * cs)])
                    c += 1
                }
            case 88..<95:
                try image.flush()
            default:
                try image.flush()
                image = try QCOW2Image.open(path: path, writable: true)
            }
            if step % 40 == 39 {
                #expect(try image.read(at: 0, count: size) == model, "step \(step)")
            }
        }
        try image.flush()
        #expect(try image.read(at: 0, count: size) == model)
        try expectClean(path)
        try writeFile(scratch.file("expected.raw"), model)
        try expectSameContent(expected: scratch.file("expected.raw"), image: path)
        let report = try DiskVerifier.verify(path: path)
        #expect(report.identical, "libqcow differs at \(report.mismatches)")
        #expect(report.bytesCompared > 0)
        #expect(report.rawClustersSkipped == 0 || depth == 1 || depth == 2)
    }
}
