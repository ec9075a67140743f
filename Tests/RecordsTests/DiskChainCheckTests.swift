import CEVMSystem
import Foundation
import QCOW2
import TestSupport
import Testing

@testable import Records

/// `Record.verifyDiskChain`: QEMU opens whatever a disk record's qcow2
/// header names, so a restore first checks that every layer below the
/// record is another record's unchanged disk, down to the VM's base. The
/// records here are crafted as a hostile or damaged tree would be: the
/// header rewritten *and* the manifest's checksum made to match it.
@Suite struct DiskChainCheckTests {
    static let incremental = [ChainRetentionTests.Shape](
        repeating: .init(memoryIncremental: true, diskIncremental: true), count: 3)

    /// Points `id`'s disk header at `backing` (as `qemu-img rebase -u`
    /// does), and rewrites its manifest's checksum to match.
    func rebase(_ chain: ChainRetentionTests.Chain, _ id: String, onto backing: String) throws {
        let record = try chain.record(id)
        let disk = try #require(record.diskPath)
        _ = try must(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", backing, disk])
        try rehash(record, file: "disk.qcow2")
    }

    func rehash(_ record: Record, file: String) throws {
        var manifest = record.manifest
        let index = try #require(manifest.files.firstIndex { $0.name == file })
        manifest.files[index].sha256 = try FileDigest.sha256(of: "\(record.directory)/\(file)")
        manifest.files[index].size = try Files.size("\(record.directory)/\(file)")
        _ = try RecordStore.commit(manifest, in: record.directory)
    }

    func reason(_ body: () throws -> Void) -> String {
        do {
            try body()
            return "no error"
        } catch { return "\(error)" }
    }

    @Test func aChainOfRecordsDownToTheBaseVerifiesAndRestores() throws {
        let chain = try ChainRetentionTests.Chain(shapes: Self.incremental, seed: 41)
        for id in chain.ids { try chain.record(id).verifyDiskChain() }
        try chain.record(chain.ids[3]).verifyRestorable()
    }

    @Test func aRecordsTreeMovedElsewhereStillVerifies() throws {
        let chain = try ChainRetentionTests.Chain(shapes: Self.incremental, seed: 42)
        let moved = chain.scratch.file("moved")
        try Files.rename(chain.store.directory, to: moved)
        try Record.load(directory: "\(moved)/\(chain.ids[3])").verifyDiskChain()
    }

    @Test func aHeaderNamingAFileOutsideTheChainIsRefused() throws {
        let chain = try ChainRetentionTests.Chain(shapes: Self.incremental, seed: 43)
        let foreign = chain.scratch.file("foreign.qcow2")
        _ = try must(["qemu-img", "create", "-q", "-f", "qcow2", foreign, "1M"])
        try rebase(chain, chain.ids[2], onto: foreign)
        // The record itself passes its own checksums: only the chain check sees it.
        try chain.record(chain.ids[3]).verify()
        let why = reason { try chain.record(chain.ids[3]).verifyRestorable() }
        #expect(why.contains("names \(foreign) as its backing file") && why.contains("neither a record's disk"), "\(why)")
        #expect(why.contains("\(chain.ids[2])/disk.qcow2"), "the layer is named: \(why)")
    }

    @Test func aHeaderNamingAnotherFileOfARecordIsRefused() throws {
        let chain = try ChainRetentionTests.Chain(shapes: Self.incremental, seed: 44)
        // A qcow2 in a record's directory, but not its disk: its memory image.
        try rebase(chain, chain.ids[3], onto: "../\(chain.ids[1])/\(MemoryImage.fileName)")
        let why = reason { try chain.record(chain.ids[3]).verifyDiskChain() }
        #expect(why.contains("does not name that file as its disk"), "\(why)")
    }

    @Test func aChainThatLoopsIsRefused() throws {
        let chain = try ChainRetentionTests.Chain(shapes: Self.incremental, seed: 45)
        try rebase(chain, chain.ids[1], onto: "../\(chain.ids[3])/disk.qcow2")
        let why = reason { try chain.record(chain.ids[3]).verifyDiskChain() }
        #expect(why.contains("a loop"), "\(why)")
    }

    @Test func aParentDiskChangedSinceItsRecordIsRefused() throws {
        let chain = try ChainRetentionTests.Chain(shapes: Self.incremental, seed: 46)
        let parent = try #require(try chain.record(chain.ids[1]).diskPath)
        let image = try QCOW2Image.open(path: parent, writable: true)
        try image.write([UInt8](repeating: 0xAB, count: 4096), at: 0)
        try image.flush()
        let why = reason { try chain.record(chain.ids[3]).verifyDiskChain() }
        #expect(why.contains(parent) && why.contains("fails its checksum"), "\(why)")
    }

    @Test func aHeaderThatDoesNotReadIsRefused() throws {
        let chain = try ChainRetentionTests.Chain(shapes: Self.incremental, seed: 47)
        let record = try chain.record(chain.ids[3])
        let disk = try #require(record.diskPath)
        try writeFile(disk, Array("not a qcow2 image at all".utf8))
        try rehash(record, file: "disk.qcow2")
        let why = reason { try chain.record(chain.ids[3]).verifyDiskChain() }
        #expect(why.contains("its header does not read"), "\(why)")
    }
}
