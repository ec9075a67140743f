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
