import CEVMSystem
import Foundation
import MigrationStream
import Records
import TestSupport
import Testing

/// The recorder of stop-and-save and background snapshots: the stream is
/// taken into a queue (memory first, a spool file beyond its bound) and a
/// parser thread follows it. Whatever path the bytes took, the record is
/// the one a recorder parsing inline writes.
@Suite struct FollowingPageRecorderTests {
    static let pages = 1536  // 6 MiB of RAM, about 6 MiB of stream

    /// Two rounds over a 6 MiB block (every fifth page zero, a third of the
    /// pages sent again with other content), then the end section.
    static func stream() -> [UInt8] {
        var b = MigrationStreamBuilder()
        b.header()
        b.configuration()
        b.ramStart(blocks: [MigrationStream.Block(name: "pc.ram", length: UInt64(pages * 4096))])
        b.section(MigrationStream.SectionType.part, id: 1)
        for p in 0..<pages { b.page(block: "pc.ram", offset: UInt64(p * 4096), data: p % 5 == 0 ? nil : content(p), named: p == 0) }
        b.endSection(id: 1)
        b.section(MigrationStream.SectionType.part, id: 1)
        for p in stride(from: 1, to: pages, by: 3) { b.page(block: "pc.ram", offset: UInt64(p * 4096), data: content(p + 7919), named: true) }
        b.endSection(id: 1)
        b.command(MigrationStream.Command.switchoverStart)
        b.section(MigrationStream.SectionType.end, id: 1)
        b.endSection(id: 1)
        b.tail()
        return b.bytes
    }

    static func content(_ n: Int) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ n &* 17 &+ 3) } }

    /// Feeds `stream` in uneven pieces (a page's worth and then some, as a
    /// socket returns them).
    static func feed(_ stream: [UInt8], _ write: (UnsafeRawBufferPointer) throws -> Void) throws {
        var at = 0, step = 1
        try stream.withUnsafeBytes { all in
            while at < all.count {
                let count = min(4099 * step % 70_001 + 1, all.count - at)
                try write(UnsafeRawBufferPointer(rebasing: all[at..<(at + count)]))
                at += count
                step += 1
            }
        }
    }

    func inline(_ stream: [UInt8], in scratch: Scratch) throws -> (files: [RecordManifest.FileEntry], memory: RecordManifest.MemoryRecord, digests: [UInt8]) {
        let directory = scratch.file("inline")
        try Files.makeDirectory(directory)
        let recorder = try PageRecorder(directory: directory, parent: nil)
        try Self.feed(stream) { try recorder.write($0) }
        let (files, memory) = try recorder.finish()
        return (files, memory, try Files.read("\(directory)/\(MemoryImage.digestFileName)"))
    }

    /// A queue of 1 MiB for a 6 MiB stream fed faster than it is parsed: most
    /// of it goes through the spool, and the record is the inline one.
    @Test(arguments: [1 << 20, FollowingPageRecorder.defaultMemoryLimit])
    func theRecordIsTheInlineOne(memoryLimit: Int) throws {
        let scratch = try Scratch()
        let stream = Self.stream()
        let expected = try inline(stream, in: scratch)
        let directory = scratch.file("following")
        try Files.makeDirectory(directory)
        let recorder = try FollowingPageRecorder(directory: directory, parent: nil, memoryLimit: memoryLimit)
        try Self.feed(stream) { try recorder.write($0) }
        #expect(recorder.bytes == Int64(stream.count))
        let (files, memory) = try recorder.finish()
        #expect(memory == expected.memory)
        #expect(files == expected.files)
        #expect(try Files.read("\(directory)/\(MemoryImage.digestFileName)") == expected.digests)
        // Zero at the end: every fifth page not sent again in the second round.
        let zero = (0..<Self.pages).filter { $0 % 5 == 0 && $0 % 3 != 1 }.count
        #expect(memory.dataPages == Self.pages - zero)
        if memoryLimit == 1 << 20 {
            #expect(recorder.spooledBytes > 0, "a 1 MiB queue spills a 6 MiB stream fed at once")
        } else {
            #expect(recorder.spooledBytes == 0, "the stream fits the queue")
        }
        #expect(!Files.exists("\(directory)/\(FollowingPageRecorder.spoolName)"), "the spool is removed once parsed")
        // The image reads back page for page, each checked against its digest.
        let reader = try MemoryImageReader(path: "\(directory)/\(MemoryImage.fileName)", layout: memory.layout)
        var seen = 0
        try reader.forEachPage { _, _, _ in seen += 1 }
        #expect(seen == Self.pages)
    }

    /// A stream the parser refuses fails the recorder: the writer hears of
    /// it (at the latest when it finishes), with the parser's reason.
    @Test func aStreamThatDoesNotParseFailsTheRecorder() throws {
        let scratch = try Scratch()
        var stream = Self.stream()
        stream[0] ^= 0xff  // the magic
        let directory = scratch.file("bad")
        try Files.makeDirectory(directory)
        let recorder = try FollowingPageRecorder(directory: directory, parent: nil, memoryLimit: 1 << 20)
        #expect {
            try Self.feed(stream) { try recorder.write($0) }
            _ = try recorder.finish()
        } throws: { error in
            "\(error)".contains("migration stream")
        }
        // The sink drops a recording whose stream failed: that cancels it.
        recorder.cancel()
        #expect(!Files.exists("\(directory)/\(FollowingPageRecorder.spoolName)"))
    }

    /// A checkpoint that fails while the stream flows cancels the recorder:
    /// the parser thread ends and the spool is removed.
    @Test func cancelStopsTheParserAndRemovesTheSpool() throws {
        let scratch = try Scratch()
        let stream = Self.stream()
        let directory = scratch.file("cancelled")
        try Files.makeDirectory(directory)
        let recorder = try FollowingPageRecorder(directory: directory, parent: nil, memoryLimit: 1 << 20)
        try Self.feed(Array(stream[0..<(stream.count / 2)])) { try recorder.write($0) }
        recorder.cancel()
        #expect(!Files.exists("\(directory)/\(FollowingPageRecorder.spoolName)"))
    }
}
