import CEVMSystem
import Foundation
import QCOW2
import TestSupport
import Testing

/// `QCOW2Image.setBacking`: the header's backing name and format rewritten
/// in place, every other extension kept; qemu-img agrees and the image
/// stays clean.
@Suite struct SetBackingTests {
    /// qemu-img's view: backing file name and format.
    func info(_ path: String) throws -> [String?] {
        let json = try must(["qemu-img", "info", "--output=json", "-U", path])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        return [object["backing-filename"] as? String, object["backing-filename-format"] as? String]
    }

    static let unknownExtension: UInt32 = 0x1234_5678
    static let unknownData = (0..<401).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }

    /// Two bases with different contents and an overlay over the first
    /// made by qemu-img, given an extension of a type nobody knows (QEMU
    /// keeps those; so must a rewrite) that is long enough to push the
    /// header past the first sector.
    func setUp(_ scratch: Scratch) throws -> String {
        try writeFile(scratch.file("a.raw"), pattern(1 << 20, seed: 1))
        try writeFile(scratch.file("b.raw"), pattern(1 << 20, seed: 2))
        try must(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", scratch.file("b.raw"), scratch.file("b.qcow2")])
        let top = scratch.file("top.qcow2")
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "a.raw", "-F", "raw", top])
        // Header (112 bytes), backing format "raw", the unknown extension, end, name.
        var file = try readFile(top)
        var cluster = Array(file[0..<112]) + [UInt8](repeating: 0, count: 4096 - 112)
        func be32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) } }
        var position = 112
        func put(_ bytes: [UInt8]) {
            cluster.replaceSubrange(position..<(position + bytes.count), with: bytes)
            position += bytes.count
        }
        put(be32(QCOW2Header.ExtensionType.backingFormat) + be32(3) + Array("raw".utf8) + [0, 0, 0, 0, 0])
        put(be32(Self.unknownExtension) + be32(UInt32(Self.unknownData.count)) + Self.unknownData + [UInt8](repeating: 0, count: 7))
        put([UInt8](repeating: 0, count: 8))
        let nameAt = position
        put(Array("a.raw".utf8))
        cluster.replaceSubrange(8..<16, with: [0, 0, 0, 0] + be32(UInt32(nameAt)))
        cluster.replaceSubrange(16..<20, with: be32(5))
        file.replaceSubrange(0..<4096, with: cluster)
        try writeFile(top, file)
        try expectClean(top)
        let image = try QCOW2Image.open(path: top, writable: true)
        try image.write(pattern(8192, seed: 9), at: 4096)
        try image.flush()
        return top
    }

    @Test func rewritesNameAndFormatKeepingExtensions() throws {
        let scratch = try Scratch()
        let top = try setUp(scratch)
        let before = try QCOW2Image.open(path: top, backing: .none).header
        #expect(before.extensions.contains { $0.type == Self.unknownExtension && $0.data == Self.unknownData })
        #expect(try info(top) == ["a.raw", "raw"])

        let atomic = try QCOW2Image.setBacking(path: top, name: "b.qcow2", format: "qcow2")
        #expect(try info(top) == ["b.qcow2", "qcow2"])
        try expectClean(top)
        let after = try QCOW2Image.open(path: top, backing: .none).header
        #expect(after.extensions.filter { $0.type != QCOW2Header.ExtensionType.backingFormat }.map(\.data)
            == before.extensions.filter { $0.type != QCOW2Header.ExtensionType.backingFormat }.map(\.data))
        #expect(after.l1TableOffset == before.l1TableOffset && after.refcountTableOffset == before.refcountTableOffset)
        // The long extension pushes the header past the first sector.
        #expect(!atomic)
        // Reads: its own clusters, then the new backing.
        let image = try QCOW2Image.open(path: top)
        #expect(try image.read(at: 4096, count: 8192) == pattern(8192, seed: 9))
        #expect(try image.read(at: 65536, count: 4096) == Array(pattern(1 << 20, seed: 2)[65536..<69632]))

        // The same again: nothing changes.
        let bytes = try readFile(top)
        try QCOW2Image.setBacking(path: top, name: "b.qcow2", format: "qcow2")
        #expect(try readFile(top) == bytes)

        // A long name, then none.
        try Files.makeDirectory(scratch.file("x"))
        let long = "./" + String(repeating: "x/../", count: 150) + "b.qcow2"
        try QCOW2Image.setBacking(path: top, name: long, format: "qcow2")
        #expect(try info(top)[0] == long)
        try expectClean(top)
        #expect(try QCOW2Image.open(path: top).read(at: 65536, count: 4096) == Array(pattern(1 << 20, seed: 2)[65536..<69632]))
        try QCOW2Image.setBacking(path: top, name: nil, format: nil)
        #expect(try info(top) == [nil, nil])
        try expectClean(top)
        let alone = try QCOW2Image.open(path: top)
        #expect(alone.backing == nil)
        #expect(try alone.read(at: 65536, count: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try alone.read(at: 4096, count: 8192) == pattern(8192, seed: 9))
        // And back.
        try QCOW2Image.setBacking(path: top, name: "a.raw", format: "raw")
        #expect(try info(top) == ["a.raw", "raw"])
        try expectClean(top)
    }

    @Test func anImageOfThisEngineStaysWithinTheFirstSector() throws {
        let scratch = try Scratch()
        try writeFile(scratch.file("a.raw"), pattern(1 << 16, seed: 1))
        try Files.makeDirectory(scratch.file("20260101-000000-0000"))
        try Files.makeDirectory(scratch.file("20260101-000000-0001"))
        _ = try QCOW2Image.create(path: scratch.file("20260101-000000-0000/memory.qcow2"), virtualSize: 1 << 16, clusterBits: 12)
        let path = scratch.file("20260101-000000-0001/memory.qcow2")
        _ = try QCOW2Image.createOverlay(path: path, backingFile: "../a.raw", clusterBits: 12)
        #expect(try QCOW2Image.setBacking(path: path, name: "../20260101-000000-0000/memory.qcow2", format: "qcow2"))
        #expect(try info(path) == ["../20260101-000000-0000/memory.qcow2", "qcow2"])
        try expectClean(path)
        #expect(try QCOW2Image.setBacking(path: path, name: nil, format: nil))
        #expect(try info(path) == [nil, nil])
        try expectClean(path)
    }

    @Test func aNameThatDoesNotFitIsRefusedAndNothingChanges() throws {
        let scratch = try Scratch()
        try writeFile(scratch.file("a.raw"), pattern(1 << 16, seed: 1))
        let path = scratch.file("small.qcow2")
        try must(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "-b", "a.raw", "-F", "raw", path])
        let bytes = try readFile(path)
        #expect(throws: QCOW2Error.self) { try QCOW2Image.setBacking(path: path, name: String(repeating: "n", count: 400), format: "raw") }
        #expect(throws: QCOW2Error.self) { try QCOW2Image.setBacking(path: path, name: String(repeating: "n", count: 1024), format: "raw") }
        #expect(try readFile(path) == bytes)
        try expectClean(path)
    }
}
