import CEVMSystem
import Foundation
import QCOW2
@testable import Records
import Testing
import TestSupport

/// The v2 memory image: each page at most once, the last version wins,
/// increments store only pages whose content changed, and a chain reads
/// back exactly what was recorded (checked page by page against a model).
@Suite struct MemoryImageTests {
    static let page = 4096

    /// Two blocks like a small PC's: RAM and a ROM-sized one.
    static func layout(ramPages: Int = 64, romPages: Int = 4) throws -> RAMLayout {
        try RAMLayout(pageSize: 4096, blocks: [("pc.ram", UInt64(ramPages * page)), ("pc.bios", UInt64(romPages * page))])
    }

    static func content(_ seed: Int) -> [UInt8] {
        var state = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<page).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
    }

    /// What a stream restores: block → page → content (nil = zero).
    typealias Model = [Int: [Int: [UInt8]?]]

    func write(_ writer: MemoryImageWriter, _ block: Int, _ index: Int, _ bytes: [UInt8]?, model: inout Model) throws {
        if let bytes {
            try bytes.withUnsafeBytes { try writer.page(block: block, offset: UInt64(index * Self.page), data: $0) }
        } else {
            try writer.page(block: block, offset: UInt64(index * Self.page), data: nil)
        }
        model[block, default: [:]][index] = .some(bytes)
    }

    func readBack(_ path: String, layout: RAMLayout) throws -> Model {
        let reader = try MemoryImageReader(path: path, layout: layout)
        var model: Model = [:]
        try reader.forEachPage { block, offset, data in
            let bytes = data.map { Array($0) }
            model[block, default: [:]][Int(offset) / Self.page] = .some(bytes?.allSatisfy { $0 == 0 } == true ? nil : bytes)
        }
        return model
    }

    /// Every page of the layout as the model says (pages never sent read zero).
    func expectRestores(_ path: String, layout: RAMLayout, _ model: Model, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let got = try readBack(path, layout: layout)
        for (index, block) in layout.blocks.enumerated() {
            for p in 0..<Int(block.length) / Self.page {
                let want: [UInt8]? = model[index]?[p] ?? nil
                let have: [UInt8]? = got[index]?[p] ?? nil
                #expect(want == have, "block \(block.name) page \(p)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test func layoutAlignsBlocksAndRefusesBadOnes() throws {
        let layout = try Self.layout()
        #expect(layout.blocks[1].offset == RAMLayout.alignment)
        #expect(layout.imageSize == 2 * RAMLayout.alignment)
        #expect(layout.guestPages == 68)
        #expect(throws: RecordError.self) { try RAMLayout(pageSize: 4096, blocks: [("a", 4096), ("a", 4096)]) }
        #expect(throws: RecordError.self) { try RAMLayout(pageSize: 4096, blocks: [("a", 100)]) }
        #expect(throws: RecordError.self) { try RAMLayout(pageSize: 3000, blocks: [("a", 6000)]) }
        #expect(throws: RecordError.self) { try layout.slot(block: 0, offset: UInt64(64 * Self.page)) }
        #expect(throws: RecordError.self) { try layout.slot(block: 2, offset: 0) }
        var moved = layout
        moved.blocks[1].offset += 4096
        #expect(throws: RecordError.self) { try moved.validate() }
    }

    @Test func fullRecordKeepsLastVersionOnceAndZeroPagesCostNothing() throws {
        let scratch = try Scratch()
        let layout = try Self.layout()
        try Files.makeDirectory(scratch.file("r1"))
        let path = scratch.file("r1/\(MemoryImage.fileName)")
        let writer = try MemoryImageWriter(path: path, layout: layout)
        var model: Model = [:]
        // Round 1: every page; a third of them zero.
        for p in 0..<64 { try write(writer, 0, p, p % 3 == 0 ? nil : Self.content(p), model: &model) }
        for p in 0..<4 { try write(writer, 1, p, Self.content(1000 + p), model: &model) }
        // Round 2: some pages again, one data page turned zero, one zero page turned data.
        for p in [1, 2, 5, 8] { try write(writer, 0, p, Self.content(100 + p), model: &model) }
        try write(writer, 0, 4, nil, model: &model)
        try write(writer, 0, 3, Self.content(300), model: &model)
        let summary = try writer.finish()
        #expect(summary.pagesSeen == 74)
        // Data pages: 64 - 22 zero in round 1 (p % 3 == 0) - p4 + p3, plus 4 ROM pages.
        #expect(summary.dataPages == 42 + 4)
        try expectRestores(path, layout: layout, model)
        // Each page at most once: the image holds no more clusters than data pages.
        let image = try QCOW2Image.open(path: path)
        #expect(try image.allocatedClusterCount() <= UInt64(summary.dataPages))
        try expectClean(path)
    }

    @Test func incrementalStoresOnlyChangedContent() throws {
        let scratch = try Scratch()
        let layout = try Self.layout()
        for d in ["p", "c"] { try Files.makeDirectory(scratch.file(d)) }
        let parentPath = scratch.file("p/\(MemoryImage.fileName)")
        let parent = try MemoryImageWriter(path: parentPath, layout: layout)
        var model: Model = [:]
        for p in 0..<64 { try write(parent, 0, p, p < 32 ? Self.content(p) : nil, model: &model) }
        for p in 0..<4 { try write(parent, 1, p, Self.content(1000 + p), model: &model) }
        _ = try parent.finish()

        let childPath = scratch.file("c/\(MemoryImage.fileName)")
        let digests = try PageDigests.read(path: scratch.file("p/\(MemoryImage.digestFileName)"), expectedSlots: layout.pageSlots)
        let child = try MemoryImageWriter(path: childPath, layout: layout, parent: ("../p/\(MemoryImage.fileName)", digests))
        // The whole RAM again, as a migration's first round sends it:
        // unchanged pages, 3 rewritten with new bytes, 1 rewritten with its
        // old bytes, one data page zeroed, one zero page given data.
        var changed = 0
        for p in 0..<64 {
            var bytes: [UInt8]? = p < 32 ? Self.content(p) : nil
            if [2, 9, 20].contains(p) { bytes = Self.content(500 + p); changed += 1 }
            if p == 10 { bytes = nil; changed += 1 }
            if p == 40 { bytes = Self.content(640); changed += 1 }
            try write(child, 0, p, bytes, model: &model)
        }
        // A page changed in round 1 and changed back in round 2: not stored.
        try write(child, 0, 9, Self.content(9), model: &model)
        changed -= 1
        let summary = try child.finish()
        #expect(summary.dataPages + summary.zeroPages == changed)
        #expect(summary.zeroPages == 1)
        #expect(try QCOW2Image.open(path: childPath, backing: .none).allocatedClusterCount() <= UInt64(changed))
        try expectRestores(childPath, layout: layout, model)
        try expectClean(childPath)

        // The tree moves: relative names keep the chain.
        let moved = scratch.file("moved")
        try FileManager.default.createDirectory(atPath: moved, withIntermediateDirectories: true)
        for d in ["p", "c"] { try FileManager.default.moveItem(atPath: scratch.file(d), toPath: "\(moved)/\(d)") }
        try expectRestores("\(moved)/c/\(MemoryImage.fileName)", layout: layout, model)
    }

    @Test func readerRefusesPagesThatDoNotMatchTheirDigest() throws {
        let scratch = try Scratch()
        let layout = try Self.layout()
        try Files.makeDirectory(scratch.file("r"))
        let path = scratch.file("r/\(MemoryImage.fileName)")
        let writer = try MemoryImageWriter(path: path, layout: layout)
        var model: Model = [:]
        try write(writer, 0, 7, Self.content(7), model: &model)
        _ = try writer.finish()
        // Change the page's bytes behind the digest's back.
        let image = try QCOW2Image.open(path: path, writable: true)
        try Self.content(8).withUnsafeBytes { try image.write($0, at: UInt64(7 * Self.page)) }
        try image.flush()
        #expect(throws: RecordError.self) { _ = try readBack(path, layout: layout) }
        // A reader told the chain was checked already does not hash the
        // pages: it gives the bytes as they are, zero pages still as zero.
        let reader = try MemoryImageReader(path: path, layout: layout)
        var unchecked: [Int: [UInt8]] = [:]
        var zero = 0
        try reader.forEachPage(checkingDigests: false) { block, offset, data in
            if let data { unchecked[Int(offset) / Self.page + block * 1000] = Array(data) } else { zero += 1 }
        }
        #expect(unchecked == [7: Self.content(8)])
        #expect(zero == layout.guestPages - 1)
        // A digest file for another layout is refused by name.
        let other = try Self.layout(ramPages: 1024)
        #expect(throws: RecordError.self) { _ = try MemoryImageReader(path: path, layout: other) }
    }

    @Test func digestFileRejectsGarbage() throws {
        #expect(throws: RecordError.self) { _ = try PageDigests.decode(Array("nope".utf8), expectedSlots: 1, path: "x") }
        let good = PageDigests(slots: 3).encoded()
        #expect(throws: RecordError.self) { _ = try PageDigests.decode(good, expectedSlots: 4, path: "x") }
        #expect(throws: RecordError.self) { _ = try PageDigests.decode(Array(good.dropLast()), expectedSlots: 3, path: "x") }
        #expect(try PageDigests.decode(good, expectedSlots: 3, path: "x") == PageDigests(slots: 3))
    }
}
