import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// Inputs found by the libFuzzer target (scripts/fuzz), replayed through the
/// same entry point. Each is named after what it exercises.
@Suite struct FuzzRegressionTests {
    static func runs(length: Int, _ runs: [(Int, UInt8, Int)]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: length)
        for (offset, value, count) in runs { for i in offset..<(offset + count) { bytes[i] = value } }
        return bytes
    }

    /// libFuzzer finding crash-583ef604c852ae5557df6a7e9034844ab0ce415c: (offset, byte, repeat) runs.
    static let v2RefcountsFreeTheHeader = runs(length: 17447, [
        (0x0, 0x51, 1), (0x1, 0x46, 1), (0x2, 0x49, 1), (0x3, 0xfb, 1),
        (0x7, 0x02, 1), (0x17, 0x0c, 1), (0x1d, 0x10, 1), (0x27, 0x01, 1),
        (0x2e, 0x30, 1), (0x36, 0x10, 1), (0x3b, 0x01, 1), (0x1006, 0x20, 1),
        (0x242f, 0x80, 1), (0x2435, 0x50, 1), (0x3427, 0x02, 4096),
    ])

    /// Found by the structure-aware mutator run against the engine as it
    /// was before the overflow checks (a trap in QCOW2Header.parse within
    /// about 1100 inputs), minimized by libFuzzer: a v3 header with
    /// backing_file_offset = 0xffff_ffff_ffff_fffe and backing_file_size =
    /// 0x68, so offset + size overflowed.
    static let backingFileOffsetNearAllOnes = runs(length: 1032, [
        (0x0, 0x51, 1), (0x1, 0x46, 1), (0x2, 0x49, 1), (0x3, 0xfb, 1),
        (0x7, 0x03, 1), (0x8, 0xff, 7), (0xf, 0xfe, 1), (0x13, 0x68, 1),
        (0x17, 0x09, 1), (0x1e, 0x03, 1), (0x1f, 0xff, 1), (0x27, 0x01, 1),
        (0x2e, 0x04, 1), (0x36, 0x02, 1), (0x3b, 0x01, 1), (0x57, 0x01, 1),
        (0x5e, 0x07, 1), (0x5f, 0x01, 1), (0x63, 0x02, 1), (0x67, 0x70, 1),
        (0x7f, 0x01, 905),
    ])

    @Test func backingFileOffsetNearAllOnesIsAnErrorNotATrap() throws {
        let scratch = try Scratch()
        let bytes = Self.backingFileOffsetNearAllOnes
        QCOW2Fuzz.exercise(bytes, scratchPath: scratch.file("f.img"))
        #expect {
            _ = try QCOW2Header.parse(bytes, fileSize: UInt64(bytes.count))
        } throws: { error in
            guard let error = error as? QCOW2Error,
                  case .invalidField("backing_file_offset", 0xffff_ffff_ffff_fffe, 8, let reason) = error
            else { return false }
            return reason.contains("overflows") && error.description.contains("0xfffffffffffffffe")
        }
    }

    @Test func v2RefcountsFreeTheHeaderIsRefusedNotFollowed() throws {
        let scratch = try Scratch()
        let path = scratch.file("f.img")
        QCOW2Fuzz.exercise(Self.v2RefcountsFreeTheHeader, scratchPath: path)
        // The refcounts claim the header and the refcount table are free:
        // allocation must refuse rather than overwrite them.
        try writeFile(path, Self.v2RefcountsFreeTheHeader)
        let image = try QCOW2Image.open(path: path, writable: true, backing: .none)
        #expect(throws: QCOW2Error.self) { try image.write([1, 2, 3], at: 1000) }
        #expect(Array(try readFile(path).prefix(4)) == [0x51, 0x46, 0x49, 0xfb])
    }
}

/// The fuzzer's structure-aware mutation (QCOW2Fuzz.mutateField): each
/// call changes one field and nothing else, and over many calls it reaches
/// every field, including the all-ones backing_file_offset that used to
/// trap.
@Suite struct FieldMutationTests {
    @Test func oneFieldPerCallAndEveryFieldReached() throws {
        let scratch = try Scratch()
        try writeFile(scratch.file("b.raw"), [UInt8](repeating: 1, count: 1 << 20))
        let image = try QCOW2Image.create(path: scratch.file("m.qcow2"), virtualSize: 1 << 20, clusterBits: 12, backingFile: "b.raw")
        try image.flush()
        let bytes = try readFile(scratch.file("m.qcow2"))
        let fields = QCOW2Fuzz.fields(of: bytes)
        var rng = SeededRandom(seed: 7)
        var reached = Set<String>()
        var allOnesBacking = false
        for _ in 0..<4000 {
            var b = bytes
            guard let (field, value) = QCOW2Fuzz.mutateField(&b, choice: rng.next()) else {
                Issue.record("no field to mutate")
                return
            }
            reached.insert(field.name)
            let changed = (0..<b.count).filter { b[$0] != bytes[$0] }
            #expect(changed.allSatisfy { $0 >= field.offset && $0 < field.offset + field.width }, "\(field.name): \(changed)")
            var stored: UInt64 = 0
            for i in 0..<field.width { stored = stored << 8 | UInt64(b[field.offset + i]) }
            #expect(stored == value)
            if field.name == "backing_file_offset" && value == UInt64.max { allOnesBacking = true }
        }
        #expect(reached == Set(fields.map(\.name)))
        #expect(allOnesBacking)
    }
}
