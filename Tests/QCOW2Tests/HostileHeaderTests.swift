import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// Corrupt and hostile images, each a named test: the engine refuses them
/// with an error naming the field and the offset.
@Suite struct HostileHeaderTests {
    /// A valid v3 image (64 KiB clusters, 16 MiB) from our own create.
    func validImage(_ scratch: Scratch, backing: Bool = false) throws -> (String, [UInt8]) {
        let path = scratch.file("h.qcow2")
        if backing { try writeFile(scratch.file("b.raw"), [UInt8](repeating: 1, count: 16 << 20)) }
        let image = try QCOW2Image.create(path: path, virtualSize: 16 << 20, backingFile: backing ? "b.raw" : nil)
        try image.write([1, 2, 3], at: 0)
        try image.flush()
        return (path, try readFile(path))
    }

    func parse(_ bytes: [UInt8]) throws(QCOW2Error) -> QCOW2Header {
        try QCOW2Header.parse(Array(bytes.prefix(65536)), fileSize: UInt64(bytes.count))
    }

    func expectError(_ bytes: [UInt8], _ check: (QCOW2Error) -> Bool, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try parse(bytes)
            Issue.record("accepted", sourceLocation: sourceLocation)
        } catch {
            #expect(check(error), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func validImageParses() throws {
        let scratch = try Scratch()
        let (_, bytes) = try validImage(scratch, backing: true)
        let header = try parse(bytes)
        #expect(header.version == 3 && header.clusterBits == 16 && header.size == 16 << 20)
        #expect(header.backingFile == "b.raw" && header.backingFormat == "raw")
    }

    @Test func hugeL1Size() throws {
        let scratch = try Scratch()
        var (_, bytes) = try validImage(scratch)
        putBE32(&bytes, 36, 0xffff_ffff)
        expectError(bytes) { error in
            guard case .invalidField("l1_size", 0xffff_ffff, 36, _) = error else { return false }
            return error.description.contains("0x24") && error.description.contains("l1_size")
        }
    }

    @Test func l1SizeTooSmallForVirtualSize() throws {
        let scratch = try Scratch()
        var (_, bytes) = try validImage(scratch)
        putBE64(&bytes, 24, 1 << 40)
        expectError(bytes) { if case .invalidField("l1_size", _, 36, _) = $0 { true } else { false } }
    }

    @Test func overlappingL1AndRefcountTable() throws {
        let scratch = try Scratch()
        var (_, bytes) = try validImage(scratch)
        putBE64(&bytes, 40, readBE64(bytes, 48))
        expectError(bytes) { if case .overlap("L1 table", "refcount table", 0x10000) = $0 { true } else { false } }
    }

    @Test func l1TableOnTheHeader() throws {
        let scratch = try Scratch()
        var (_, bytes) = try validImage(scratch)
        putBE64(&bytes, 40, 0)
        expectError(bytes) { if case .invalidField("l1_table_offset", 0, 40, _) = $0 { true } else { false } }
    }

    @Test func backingNameOver1023Bytes() throws {
        let scratch = try Scratch()
        var (_, bytes) = try validImage(scratch, backing: true)
        putBE32(&bytes, 16, 1024)
        expectError(bytes) { error in
            guard case .invalidField("backing_file_size", 1024, 16, _) = error else { return false }
            return error.description.contains("0x10")
        }
    }

    @Test func unknownIncompatibleBits() throws {
        let scratch = try Scratch()
        var (_, bytes) = try validImage(scratch)
        putBE64(&bytes, 72, 1 << 5 | 1 << 40)
        expectError(bytes) { $0 == .unsupportedIncompatibleFeatures(bits: 1 << 5 | 1 << 40, offset: 72) }
    }

    @Test func externalDataFileAndExtendedL2AreRefused() throws {
        let scratch = try Scratch()
        var (_, bytes) = try validImage(scratch)
        putBE64(&bytes, 72, QCOW2Header.IncompatibleFeature.externalDataFile | QCOW2Header.IncompatibleFeature.extendedL2)
        expectError(bytes) { $0 == .unsupportedIncompatibleFeatures(bits: 0x14, offset: 72) }
    }

    @Test func truncatedHeader() throws {
        let scratch = try Scratch()
        let (_, bytes) = try validImage(scratch)
        expectError(Array(bytes.prefix(50))) { if case .truncated("qcow2 header", 0, 72, 50) = $0 { true } else { false } }
        expectError(Array(bytes.prefix(90))) { if case .truncated("qcow2 v3 header", 0, _, 90) = $0 { true } else { false } }
    }

    @Test func truncatedFileLosesTables() throws {
        let scratch = try Scratch()
        let (path, bytes) = try validImage(scratch)
        try writeFile(path, Array(bytes.prefix(0x18000)))
        #expect {
            _ = try QCOW2Image.open(path: path)
        } throws: { error in
            guard let error = error as? QCOW2Error, case .truncated("L1 table", 0x30000, _, 0x18000) = error else { return false }
            return error.description.contains("0x30000")
        }
    }

    @Test func badMagicVersionClusterBitsCrypt() throws {
        let scratch = try Scratch()
        let (_, bytes) = try validImage(scratch)
        var b = bytes
        b[0] = 0x51; b[3] = 0
        expectError(b) { $0 == .badMagic(found: 0x5146_4900) }
        b = bytes; putBE32(&b, 4, 4)
        expectError(b) { if case .invalidField("version", 4, 4, _) = $0 { true } else { false } }
        b = bytes; putBE32(&b, 20, 30)
        expectError(b) { if case .invalidField("cluster_bits", 30, 20, _) = $0 { true } else { false } }
        b = bytes; putBE32(&b, 32, 1)
        expectError(b) { if case .invalidField("crypt_method", 1, 32, _) = $0 { true } else { false } }
        b = bytes; putBE32(&b, 96, 7)
        expectError(b) { if case .invalidField("refcount_order", 7, 96, _) = $0 { true } else { false } }
        b = bytes; putBE32(&b, 100, 105)
        expectError(b) { if case .invalidField("header_length", 105, 100, _) = $0 { true } else { false } }
        b = bytes; putBE32(&b, 56, 0x1000)
        expectError(b) { if case .invalidField("refcount_table_clusters", 0x1000, 56, _) = $0 { true } else { false } }
    }

    @Test func extensionRunningOffTheCluster() throws {
        let scratch = try Scratch()
        var (_, bytes) = try validImage(scratch)
        putBE32(&bytes, 112, 0x1234_5678)
        putBE32(&bytes, 116, 0x00ff_ffff)
        expectError(bytes) { if case .invalidExtension(0x1234_5678, 112, _) = $0 { true } else { false } }
    }

    @Test func l2EntryPointingAtTheHeader() throws {
        let scratch = try Scratch()
        let (path, bytes) = try validImage(scratch)
        let l1 = Int(readBE64(bytes, 40))
        let l2 = Int(readBE64(bytes, l1) & QCOW2Entries.offsetMask)
        var b = bytes
        putBE64(&b, l2, QCOW2Entries.copied | 0)  // copied flag, offset 0: unallocated
        putBE64(&b, l2, QCOW2Entries.copied | 0x10000)  // the refcount table
        try writeFile(path, b)
        let image = try QCOW2Image.open(path: path)
        #expect {
            _ = try image.read(at: 0, count: 16)
        } throws: { error in
            guard let error = error as? QCOW2Error, case .overlap(_, "refcount table", 0x10000) = error else { return false }
            return true
        }
    }

    @Test func l1EntryWithReservedBits() throws {
        let scratch = try Scratch()
        let (path, bytes) = try validImage(scratch)
        var b = bytes
        let l1 = Int(readBE64(bytes, 40))
        putBE64(&b, l1, readBE64(bytes, l1) | 0x2)
        try writeFile(path, b)
        #expect {
            _ = try QCOW2Image.open(path: path)
        } throws: { error in
            guard let error = error as? QCOW2Error, case .invalidTableEntry("L1", 0, _, 0x30000, _) = error else { return false }
            return true
        }
    }

    @Test func unknownAutoclearBitsClearedBeforeWriting() throws {
        let scratch = try Scratch()
        var (path, bytes) = try validImage(scratch)
        putBE64(&bytes, 88, 0x3 | 1 << 50)
        try writeFile(path, bytes)
        #expect(try QCOW2Image.open(path: path).header.autoclearFeatures == 0x3 | 1 << 50)
        let image = try QCOW2Image.open(path: path, writable: true)
        #expect(image.header.autoclearFeatures == 0)
        #expect(readBE64(try readFile(path), 88) == 0)
    }

    @Test func dirtyImagesOpenReadOnlyOnly() throws {
        let scratch = try Scratch()
        var (path, bytes) = try validImage(scratch)
        putBE64(&bytes, 72, QCOW2Header.IncompatibleFeature.dirty)
        try writeFile(path, bytes)
        #expect(try QCOW2Image.open(path: path).read(at: 0, count: 3) == [1, 2, 3])
        #expect {
            _ = try QCOW2Image.open(path: path, writable: true)
        } throws: { error in
            guard let error = error as? QCOW2Error, case .readOnly = error else { return false }
            return true
        }
    }

    @Test func backingChainLoopIsBounded() throws {
        let scratch = try Scratch()
        let a = scratch.file("a.qcow2")
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "-u", a, "1M"])
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "-u", scratch.file("b.qcow2"), "1M"])
        #expect {
            _ = try QCOW2Image.open(path: a)
        } throws: { error in
            guard let error = error as? QCOW2Error, case .backingChainTooDeep = error else { return false }
            return true
        }
    }

    /// backing_file_offset = 2^64-1: offset + size used to overflow (a trap,
    /// exit 132, in `cevm disk info`). Now an error naming the field, its
    /// offset and the value in hex, from the parser and from
    /// `QCOW2Image.open`, the call `cevm disk info` makes first.
    @Test func backingFileOffsetAllOnesIsAnErrorNotATrap() throws {
        let scratch = try Scratch()
        var (path, bytes) = try validImage(scratch, backing: true)
        putBE64(&bytes, 8, UInt64.max)
        let named: (QCOW2Error) -> Bool = { error in
            guard case .invalidField("backing_file_offset", UInt64.max, 8, let reason) = error else { return false }
            return reason.contains("overflows") && error.description.contains("at offset 0x8 ")
                && error.description.contains("0xffffffffffffffff")
        }
        expectError(bytes, named)
        try writeFile(path, bytes)
        #expect {
            _ = try QCOW2Image.open(path: path)
        } throws: { error in
            guard let error = error as? QCOW2Error else { return false }
            return named(error)
        }
    }

    /// Every header field, extension length and first L1 / refcount-table
    /// entry at every boundary value (the fuzzer's structure-aware table):
    /// parsing, opening, reading and writing end in a value or a
    /// `QCOW2Error`, never a trap; a field error names a real header field
    /// at its own offset.
    @Test(arguments: [false, true])
    func everyFieldAtEveryBoundaryValue(backing: Bool) throws {
        let scratch = try Scratch()
        // A small image (4 KiB clusters, 1 MiB) so the sweep stays quick.
        let path = scratch.file("s.qcow2")
        if backing { try writeFile(scratch.file("b.raw"), [UInt8](repeating: 1, count: 1 << 20)) }
        let image = try QCOW2Image.create(path: path, virtualSize: 1 << 20, clusterBits: 12, backingFile: backing ? "b.raw" : nil)
        try image.write([1, 2, 3], at: 5000)
        try image.flush()
        let bytes = try readFile(path)
        let fields = QCOW2Fuzz.fields(of: bytes)
        #expect(fields.count == QCOW2Fuzz.headerFields.count + (backing ? 1 : 0) + 2)
        let known = Dictionary(uniqueKeysWithValues: QCOW2Fuzz.headerFields.map { ($0.name, UInt64($0.offset)) })
        var cases = 0, refused = 0
        for field in fields {
            for value in QCOW2Fuzz.boundaryValues(width: field.width, fileSize: UInt64(bytes.count), clusterSize: 4096) {
                var b = bytes
                QCOW2Fuzz.set(field, to: value, in: &b)
                do {
                    _ = try QCOW2Header.parse(Array(b.prefix(4096)), fileSize: UInt64(b.count))
                } catch {
                    refused += 1
                    if case .invalidField(let name, _, let offset, _) = error {
                        #expect(known[name] == offset, "\(field.name) = \(hex(value)): \(error)")
                    }
                }
                QCOW2Fuzz.exerciseImage(b, scratchPath: scratch.file("fuzz.img"))
                cases += 1
            }
        }
        #expect(cases > 500)
        #expect(refused > cases / 4)
    }

    /// Two ranges near 2^64 overlap even though their ends wrap; the check
    /// compares distances instead of computing the ends.
    @Test func overlapCheckDoesNotWrap() {
        #expect(rangesOverlap(UInt64.max - 5, 20, UInt64.max - 3, 20))
        #expect(!rangesOverlap(UInt64.max - 5, 2, UInt64.max - 3, 20))
        #expect(rangesOverlap(0x10000, 0x10000, 0x1ffff, 1))
        #expect(!rangesOverlap(0x10000, 0x10000, 0x20000, UInt64.max))
        #expect(checkedSum(UInt64.max, 1) == nil && checkedProduct(1 << 62, 4) == nil)
        #expect(checkedShift(1 << 8, 56) == nil && checkedShift(1 << 8, 54) == 1 << 62)
    }

    @Test func writesOutsideTheDiskAreRefused() throws {
        let scratch = try Scratch()
        let image = try QCOW2Image.create(path: scratch.file("o.qcow2"), virtualSize: 1 << 20)
        #expect(throws: QCOW2Error.outOfBounds(offset: (1 << 20) - 1, count: 2, virtualSize: 1 << 20)) {
            try image.write([1, 2], at: (1 << 20) - 1)
        }
        let reader = try QCOW2Image.open(path: scratch.file("o.qcow2"))
        #expect(throws: QCOW2Error.readOnly(path: scratch.file("o.qcow2"), reason: "opened read-only")) {
            try reader.write([1], at: 0)
        }
    }
}
