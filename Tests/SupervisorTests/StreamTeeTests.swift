#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import MigrationStream
import Records
import TestSupport
import Testing

@testable import Supervisor

/// The tee of a CEVM checkpoint on real Unix sockets: every byte the source
/// sends reaches the destination and the spool, in order, and the spool's
/// digest is the file's.
@Suite struct StreamTeeTests {

    static let blocks = [MigrationStream.Block(name: "pc.ram", length: 16 * 4096), MigrationStream.Block(name: "pc.bios", length: 4096)]

    static func content(_ n: Int) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ n &* 7 &+ 1) } }

    /// A stream of two RAM blocks, sent in two rounds and a final section,
    /// and each RAM page's last version (nil: zero).
    static func pageStream() -> (stream: [UInt8], last: [Int: [UInt8]?]) {
        let page = 4096
        var b = MigrationStreamBuilder()
        b.header()
        b.configuration()
        b.ramStart(blocks: Self.blocks)
        // Round 1: every page; round 2: three again, one of them now zero.
        var last: [Int: [UInt8]?] = [:]
        b.section(MigrationStream.SectionType.part, id: 1)
        for p in 0..<16 {
            let data: [UInt8]? = p % 4 == 0 ? nil : content(p)
            b.page(block: "pc.ram", offset: UInt64(p * page), data: data)
            last[p] = .some(data)
        }
        b.page(block: "pc.bios", offset: 0, data: content(99))
        b.endSection(id: 1)
        b.section(MigrationStream.SectionType.part, id: 1)
        for (p, data) in [(1, content(101)), (2, nil), (5, content(105))] as [(Int, [UInt8]?)] {
            b.page(block: "pc.ram", offset: UInt64(p * page), data: data, named: true)
            last[p] = .some(data)
        }
        b.endSection(id: 1)
        b.command(MigrationStream.Command.switchoverStart)
        b.section(MigrationStream.SectionType.end, id: 1)
        b.page(block: "pc.ram", offset: UInt64(7 * page), data: content(107), named: true)
        last[7] = .some(content(107))
        b.endSection(id: 1)
        b.tail()
        return (b.bytes, last)
    }

    /// Stop-and-save's following recorder: the stream is queued while it
    /// flows and a parser thread follows it; the record is the one parsing
    /// inline makes, and no spool file is left.
    /// The same through a tee: the spool takes the bytes spliced from the
    /// tee's pipe, and the destination gets the stream unchanged.
    @Test func spooledPagesRecordWhatInlinePagesRecord() async throws {
        let scratch = try Scratch()
        let (stream, _) = Self.pageStream()
        var records: [(RecordedMemory, String)] = []
        for (name, spooled, tee) in [("inline", false, false), ("spooled", true, false), ("spooled-tee", true, true)] {
            let directory = scratch.file(name)
            try Files.makeDirectory(directory)
            var received: Task<[UInt8], any Error>?
            var destination: String?
            var listener: Int32 = -1
            if tee {
                let path = scratch.file("\(name)-in.sock")
                listener = try UnixSocket.listen(path: path)
                destination = path
                received = Task.detached { [listener] () throws -> [UInt8] in
                    guard let fd = try UnixSocket.accept(listener, timeoutMilliseconds: 10_000) else {
                        throw SystemError("accept", errno: ETIMEDOUT, subject: "the tee did not connect")
                    }
                    defer { close(fd) }
                    var all: [UInt8] = []
                    var buffer = [UInt8](repeating: 0, count: 1 << 16)
                    while true {
                        let n = try Files.readSome(fd, into: &buffer, subject: "destination")
                        if n == 0 { return all }
                        all += buffer[0..<n]
                    }
                }
            }
            defer { if listener >= 0 { close(listener) } }
            let sink = try MigrationSink(
                socketPath: scratch.file("\(name).sock"),
                recording: spooled ? .spooledPages(directory: directory, parent: nil) : .pages(directory: directory, parent: nil),
                forwardTo: destination)
            let source = try UnixSocket.connect(path: sink.socketPath)
            try Files.writeAll(source, stream, subject: "source")
            close(source)
            records.append((try await sink.finish(), directory))
            if let received {
                #expect(try await received.value == stream, "the destination gets the stream as the source sent it")
                #expect(sink.spliced, "the tee spliced the stream into the spool")
            }
        }
        let inline = records[0]
        for spooled in records.dropFirst() {
            #expect(spooled.0.memory == inline.0.memory)
            #expect(spooled.0.streamBytes == Int64(stream.count))
            #expect(spooled.0.files.map(\.sha256) == inline.0.files.map(\.sha256))
            #expect(!Files.exists("\(spooled.1)/\(FollowingPageRecorder.spoolName)"), "the raw spool is removed once parsed")
            #expect(try Files.list(spooled.1).sorted() == Files.list(inline.1).sorted())
        }
    }
    @Test(arguments: [1, 70_000, 5 << 20 | 12_345])
    func everyByteReachesTheDestinationAndTheSpool(size: Int) async throws {
        let scratch = try Scratch()
        let stream = pattern(size, seed: UInt8(size % 251))
        let destinationPath = scratch.file("in.sock")
        let listener = try UnixSocket.listen(path: destinationPath)
        defer { close(listener) }
        // The destination: accept, read to the end.
        let received = Task.detached { () throws -> [UInt8] in
            guard let fd = try UnixSocket.accept(listener, timeoutMilliseconds: 10_000) else { throw SystemError("accept", errno: ETIMEDOUT, subject: "the tee did not connect") }
            defer { close(fd) }
            var all: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = try Files.readSome(fd, into: &buffer, subject: "destination")
                if n == 0 { return all }
                all += buffer[0..<n]
            }
        }
        let tee = try MigrationSink(
            socketPath: scratch.file("tee.sock"), recording: .stream(path: scratch.file("memory.mig")), forwardTo: destinationPath)
        // The source: connect, send everything in uneven pieces, close.
        let source = try UnixSocket.connect(path: tee.socketPath)
        var offset = 0
        var piece = 1
        while offset < stream.count {
            let end = min(stream.count, offset + piece)
            try Files.writeAll(source, stream[offset..<end], subject: "source")
            offset = end
            piece = piece * 3 + 17
        }
        close(source)
        let recorded = try await tee.finish()
        #expect(recorded.files.count == 1 && recorded.memory == nil)
        let entry = try #require(recorded.files.first)
        #expect(try await received.value == stream)
        #expect(entry.size == Int64(size))
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: scratch.file("memory.mig")))) == stream)
        // The digest the tee recorded, against one computed independently
        // (coreutils' sha256sum) of the bytes the source sent, not of the spool.
        try Files.writeAtomically(stream, to: scratch.file("sent"))
        let sent = try runTool(["sha256sum", scratch.file("sent")])
        #expect(sent.status == 0, "\(sent.output)")
        #expect(entry.sha256 == sent.output.split(separator: " ").first.map(String.init), "\(sent.output)")
        #expect(tee.bytesReceived == Int64(size))
        #expect(tee.spliced, "Unix sockets splice: the stream never passed through the tee's buffers")
    }

    /// Record format 2 through the tee: New_VM gets the stream unchanged,
    /// the record keeps each page's last version once, and the prologue
    /// and epilogue fit back around a page section.
    @Test func aTeeRecordingPagesForwardsTheStreamUnchanged() async throws {
        let scratch = try Scratch()
        let page = 4096
        let (stream, last) = Self.pageStream()
        func content(_ n: Int) -> [UInt8] { Self.content(n) }

        let destinationPath = scratch.file("in.sock")
        let listener = try UnixSocket.listen(path: destinationPath)
        defer { close(listener) }
        let received = Task.detached { () throws -> [UInt8] in
            guard let fd = try UnixSocket.accept(listener, timeoutMilliseconds: 10_000) else { throw SystemError("accept", errno: ETIMEDOUT, subject: "the tee did not connect") }
            defer { close(fd) }
            var all: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = try Files.readSome(fd, into: &buffer, subject: "destination")
                if n == 0 { return all }
                all += buffer[0..<n]
            }
        }
        let directory = scratch.file("record")
        try Files.makeDirectory(directory)
        let tee = try MigrationSink(
            socketPath: scratch.file("tee.sock"), recording: .pages(directory: directory, parent: nil), forwardTo: destinationPath)
        let source = try UnixSocket.connect(path: tee.socketPath)
        var offset = 0
        var piece = 1
        while offset < stream.count {
            let end = min(stream.count, offset + piece)
            try Files.writeAll(source, stream[offset..<end], subject: "source")
            offset = end
            piece = piece * 3 + 17
        }
        close(source)
        let recorded = try await tee.finish()
        #expect(try await received.value == stream)
        #expect(recorded.streamBytes == Int64(stream.count))
        let memory = try #require(recorded.memory)
        #expect(memory.kind == .full)
        // 16 RAM pages: 4 zero in round 1, page 2 zeroed, page 4... zero stays; plus the BIOS page.
        let dataPages = last.values.filter { $0 != nil }.count + 1
        #expect(memory.dataPages == dataPages)
        #expect(Set(recorded.files.map(\.name)) == Set(memory.fileNames))
        let reader = try MemoryImageReader(path: "\(directory)/\(memory.image)", layout: memory.layout)
        try reader.forEachPage { block, offset, data in
            let want: [UInt8]? = block == 1 ? content(99) : (last[Int(offset) / page] ?? nil)
            #expect(data.map { Array($0) } == want, "block \(block) offset \(offset)")
        }
        let prologue = try Files.read("\(directory)/\(memory.prologue)")
        let epilogue = try Files.read("\(directory)/\(memory.epilogue)")
        let writer = try MigrationStreamWriter(prologue: prologue, epilogue: epilogue)
        #expect(writer.blocks == Self.blocks)
    }

    /// A stream the parser does not understand fails the recording, naming it.
    @Test func aStreamThePagesRecorderCannotParseFailsTheSink() async throws {
        let scratch = try Scratch()
        let directory = scratch.file("record")
        try Files.makeDirectory(directory)
        let sink = try MigrationSink(socketPath: scratch.file("sink.sock"), recording: .pages(directory: directory, parent: nil))
        let source = try UnixSocket.connect(path: sink.socketPath)
        try Files.writeAll(source, Array("NOT A QEMU STREAM AT ALL".utf8), subject: "source")
        close(source)
        await #expect(throws: (any Error).self) { _ = try await sink.finish() }
        do { _ = try await sink.finish() } catch { #expect("\(error)".contains("migration stream"), "\(error)") }
    }
}
