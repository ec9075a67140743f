import Foundation
import TestSupport
import Testing
@testable import DiskTools
@testable import QCOW2

/// `cevm disk verify` (DiskVerifier) on chains QEMU wrote: layers with
/// different cluster sizes read the same through all three readers, and a
/// cluster one reader sees corrupted is blamed on that reader.
@Suite struct VerifyTests {
    /// base (64 KiB clusters) <- mid (16 KiB clusters) <- top (64 KiB
    /// clusters), all written by qemu-io, so that one 64 KiB top cluster is
    /// served partly by mid and partly by base.
    func mixedClusterChain(_ scratch: Scratch) throws -> String {
        let base = scratch.file("base.qcow2"), mid = scratch.file("mid.qcow2"), top = scratch.file("top.qcow2")
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", base, "4M"])
        try must(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4M", base])
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=16384", "-b", "base.qcow2", "-F", "qcow2", mid])
        try must([
            "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 16k 16k", "-c", "write -P 0x23 80k 8k",
            "-c", "write -P 0x24 1040k 16k", "-c", "write -P 0x25 2064k 48k", mid,
        ])
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "mid.qcow2", "-F", "qcow2", top])
        try must(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 192k 64k", "-c", "write -P 0x34 1028k 4k", top])
        return top
    }

    /// The host offset of the data cluster holding guest `offset` in a
    /// single-layer view of `path`.
    func hostOffset(_ path: String, guest offset: UInt64) throws -> UInt64 {
        let image = try QCOW2Image.open(path: path, backing: .none)
        guard case .data(let host) = try image.clusterState(offset / image.clusterSize) else {
            throw ToolFailure(command: "clusterState", status: 0, output: "guest \(offset) is not data in \(path)")
        }
        return host + offset % image.clusterSize
    }

    /// A copy of the chain whose `top.qcow2` has 100 bytes at each of
    /// `guest` overwritten in the file (corrupted data clusters).
    func corruptedCopy(_ scratch: Scratch, top: String, guest offsets: UInt64...) throws -> String {
        let copy = scratch.file("copy")
        try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: false)
        for name in ["base.qcow2", "mid.qcow2", "top.qcow2"] {
            try FileManager.default.copyItem(atPath: scratch.file(name), toPath: copy + "/" + name)
        }
        var bytes = try readFile(copy + "/top.qcow2")
        for guest in offsets {
            let host = try hostOffset(top, guest: guest)
            for i in 0..<100 { bytes[Int(host) + i] ^= 0x5a }
        }
        try writeFile(copy + "/top.qcow2", bytes)
        return copy + "/top.qcow2"
    }

    @Test func smallerClustersInTheMiddleReadTheSame() throws {
        let scratch = try Scratch()
        let top = try mixedClusterChain(scratch)
        let report = try DiskVerifier.verify(path: top)
        #expect(report.identical, "\(report.mismatches) \(report.disagreements)")
        #expect(report.pieceSize == 16384)
        #expect(report.layers.count == 3)
        #expect(report.bytesCompared == 4 << 20)
        // What the engine read is what QEMU reads.
        try must(["qemu-img", "convert", "-O", "raw", top, scratch.file("expected.raw")])
        #expect(try QCOW2Image.open(path: top).read(at: 0, count: 4 << 20) == readFile(scratch.file("expected.raw")))
        // Longer engine reads change nothing: libqcow still reads piece by piece.
        #expect(try DiskVerifier.verify(path: top, maxRun: 1 << 20).identical)
    }

    @Test func aClusterCevmReadsCorruptedIsDifferentAndBlamesCevm() throws {
        let scratch = try Scratch()
        let top = try mixedClusterChain(scratch)
        let corrupted = try corruptedCopy(scratch, top: top, guest: 192 << 10)
        let report = try DiskVerifier.verify(path: top, maxRun: 0, enginePath: corrupted, libqcowPath: top, qemuRangeLimit: 64)
        #expect(!report.identical)
        #expect(report.mismatches.first == 192 << 10)
        #expect(report.disagreements.first?.wrongReader == "cevm")
        #expect(report.disagreements.first?.offset == 192 << 10)
    }

    @Test func aClusterLibqcowReadsCorruptedIsSettledByQEMU() throws {
        let scratch = try Scratch()
        let top = try mixedClusterChain(scratch)
        let corrupted = try corruptedCopy(scratch, top: top, guest: 1028 << 10)
        let report = try DiskVerifier.verify(path: top, maxRun: 0, enginePath: top, libqcowPath: corrupted, qemuRangeLimit: 64)
        #expect(report.identical, "\(report.mismatches)")
        #expect(report.disagreements.count == 1)
        #expect(report.disagreements.first?.wrongReader == "libqcow")
        #expect(report.disagreements.first?.offset == 1024 << 10)
    }

    /// Past the range limit QEMU converts the whole image once: three
    /// disputes with a limit of one, all settled, the last two from the
    /// whole copy.
    @Test func manyDisputesAreSettledFromOneWholeConversion() throws {
        let scratch = try Scratch()
        let top = try mixedClusterChain(scratch)
        let corrupted = try corruptedCopy(scratch, top: top, guest: 192 << 10, 224 << 10, 1028 << 10)
        let report = try DiskVerifier.verify(path: top, maxRun: 0, enginePath: top, libqcowPath: corrupted, qemuRangeLimit: 1)
        #expect(report.identical, "\(report.mismatches)")
        #expect(report.disagreements.map(\.offset) == [192 << 10, 224 << 10, 1024 << 10])
        #expect(report.disagreements.allSatisfy { $0.wrongReader == "libqcow" })
    }
}
