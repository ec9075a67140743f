import CEVMSystem
import Foundation
import MigrationStream

/// Records a migration stream as a version 2 memory (Docs/record-format.md):
/// the stream is parsed as it passes; its RAM pages go to a page image
/// (`MemoryImageWriter`: each page once, the last version), everything
/// else is kept verbatim as the prologue (up to the RAM setup) and the
/// epilogue (after the live phase). The bytes are read, never changed: the
/// caller forwards the same bytes to New_VM.
///
/// One thread feeds it (the tee's). A stream the parser does not
/// understand fails the recorder with the parser's error, which names it.
public final class PageRecorder {
    public struct Parent: Sendable {
        /// The parent record's id and its directory.
        public var id: String
        public var directory: String
        public var memory: RecordManifest.MemoryRecord

        public init(id: String, directory: String, memory: RecordManifest.MemoryRecord) {
            self.id = id
            self.directory = directory
            self.memory = memory
        }

        /// The record in `directory` as the memory parent of the next
        /// record, or nil and the reason the next record must be full: the
        /// record is unreadable or holds no page image, or its memory chain
        /// already holds `MemoryChain.maxIncrementalDepth` records.
        public static func forNextRecord(after directory: String) -> (parent: Parent?, whyFull: String?) {
            do {
                let record = try Record.load(directory: directory)
                let parent = try Parent(record: record)
                let depth = try MemoryChain(record).records.count
                guard depth < MemoryChain.maxIncrementalDepth else {
                    return (nil, "the memory chain of \(record.id) holds \(depth) records, the most an increment may extend")
                }
                return (parent, nil)
            } catch {
                return (nil, "the previous record \(directory) cannot be a memory parent (\(error))")
            }
        }

        public init(record: Record) throws {
            guard let memory = record.manifest.memory else {
                throw RecordError.badMemoryImage(reason: "record \(record.id) holds no page image (version 1): no parent for an increment")
            }
            id = record.id
            directory = record.directory
            self.memory = memory
        }
    }

    let directory: String
    var parser: MigrationStreamParser
    var sink: Sink
    public private(set) var bytesSeen: Int64 = 0

    /// `directory`: the new record's; `parent`: the record to build on, if
    /// its layout turns out to be this stream's (else the record is full).
    public init(directory: String, parent: Parent?, pageSize: Int = 4096) throws {
        self.directory = directory
        parser = MigrationStreamParser(pageSize: pageSize)
        sink = Sink(
            state: try SinkState(directory: directory, parent: parent, pageSize: UInt64(pageSize)))
    }

    /// The next bytes of the stream.
    public func write(_ chunk: UnsafeRawBufferPointer) throws {
        do { try parser.consume(chunk, into: &sink) } catch {
            throw RecordError.writeFailed(path: "\(directory)/\(MemoryImage.fileName)", reason: "the migration stream: \(error)")
        }
        bytesSeen += Int64(chunk.count)
        if let failure = sink.state.failure { throw failure }
    }

    /// The stream ended: checks it was whole, makes every file durable and
    /// returns their entries and the memory description for the manifest.
    public func finish() throws -> (files: [RecordManifest.FileEntry], memory: RecordManifest.MemoryRecord) {
        do { try parser.finish() } catch {
            throw RecordError.writeFailed(path: "\(directory)/\(MemoryImage.fileName)", reason: "the migration stream: \(error)")
        }
        let state = sink.state
        if let failure = state.failure { throw failure }
        guard let writer = state.writer, let layout = state.layout else {
            throw RecordError.writeFailed(path: directory, reason: "the migration stream announced no RAM blocks")
        }
        let summary = try writer.finish()
        var files: [RecordManifest.FileEntry] = []
        files.append(try state.prologue.finish(role: .memory))
        files.append(try state.epilogue.finish(role: .memory))
        // The image's pages are checked against the digest file, which is
        // hashed; the image itself is not read back (RecordManifest.FileEntry).
        let image = "\(directory)/\(MemoryImage.fileName)", digests = "\(directory)/\(MemoryImage.digestFileName)"
        try Files.fsync(path: image)
        files.append(.init(name: MemoryImage.fileName, role: .memory, size: try Files.size(image), sha256: nil))
        try Files.fsync(path: digests)
        files.append(.init(name: MemoryImage.digestFileName, role: .memory, size: try Files.size(digests), sha256: try FileDigest.sha256(of: digests)))
        try Files.fsync(path: directory)
        let memory = RecordManifest.MemoryRecord(
            kind: state.incrementalOver == nil ? .full : .incremental, parent: state.incrementalOver, layout: layout,
            image: MemoryImage.fileName, digests: MemoryImage.digestFileName, prologue: SinkState.prologueName,
            epilogue: SinkState.epilogueName, dataPages: summary.dataPages, zeroPages: summary.zeroPages,
            unchangedPages: summary.unchangedPages)
        return (files, memory)
    }

    final class SinkState {
        static let prologueName = "memory.prologue"
        static let epilogueName = "memory.epilogue"
        let directory: String
        let parent: Parent?
        let pageSize: UInt64
        let prologue: StreamSpool
        let epilogue: StreamSpool
        var writer: MemoryImageWriter?
        var layout: RAMLayout?
        /// The parent's id when the record is an increment over it.
        var incrementalOver: String?
        var failure: (any Error)?

        init(directory: String, parent: Parent?, pageSize: UInt64) throws {
            self.directory = directory
            self.parent = parent
            self.pageSize = pageSize
            prologue = try StreamSpool(path: "\(directory)/\(Self.prologueName)")
            epilogue = try StreamSpool(path: "\(directory)/\(Self.epilogueName)")
        }

        func start(_ blocks: [MigrationStream.Block]) throws {
            let layout = try RAMLayout(pageSize: pageSize, blocks: blocks.map { ($0.name, $0.length) })
            self.layout = layout
            var base: (imageName: String, digests: PageDigests)?
            if let parent, parent.memory.layout == layout {
                let digests = try PageDigests.read(
                    path: "\(parent.directory)/\(parent.memory.digests)", expectedSlots: layout.pageSlots)
                // Named relatively: siblings in one records tree.
                let parentName = parent.directory.split(separator: "/").last.map(String.init) ?? parent.id
                base = ("../\(parentName)/\(parent.memory.image)", digests)
                incrementalOver = parent.id
            }
            writer = try MemoryImageWriter(path: "\(directory)/\(MemoryImage.fileName)", layout: layout, parent: base)
        }
    }

    struct Sink: MigrationStreamSink {
        let state: SinkState

        mutating func verbatim(_ bytes: UnsafeRawBufferPointer, region: MigrationStream.Region) {
            guard state.failure == nil else { return }
            do {
                switch region {
                case .prologue: try state.prologue.write(bytes)
                case .live: break
                case .epilogue: try state.epilogue.write(bytes)
                }
            } catch { state.failure = error }
        }

        mutating func blocks(_ blocks: [MigrationStream.Block]) {
            guard state.failure == nil else { return }
            do { try state.start(blocks) } catch { state.failure = error }
        }

        mutating func page(block: Int, offset: UInt64, content: MigrationStream.PageContent) {
            guard state.failure == nil else { return }
            guard let writer = state.writer else {
                state.failure = RecordError.badMemoryImage(reason: "a page before the RAM block list")
                return
            }
            do {
                switch content {
                case .zero: try writer.page(block: block, offset: offset, data: nil)
                case .data(let bytes): try writer.page(block: block, offset: offset, data: bytes)
                }
            } catch { state.failure = error }
        }
    }
}
