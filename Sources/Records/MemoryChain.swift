import CEVMSystem
import Foundation
import QCOW2

/// The records a version 2 record's memory restores from: itself, then its
/// memory parent, and so on to a full record. Parents are found by id in
/// the same records tree (the record's directory's siblings), never by a
/// path a file names, so a tree moved, copied or renamed restores.
public struct MemoryChain: Sendable {
    /// Nearest first: the record itself, its parent, ..., the full one.
    public let records: [Record]

    /// A chain longer than this is refused: the reader opens every layer
    /// as one qcow2 backing chain, and qcow2 chains stop there.
    public static let maxDepth = QCOW2Image.maxChainDepth

    /// The longest chain a new increment may extend: a record whose parent's
    /// chain holds this many records is written full instead, so that
    /// checkpoints taken without retention never reach `maxDepth` (the
    /// disk's chains have the same bound).
    public static let maxIncrementalDepth = 16

    public init(_ record: Record) throws {
        var chain: [Record] = []
        var seen = Set<String>()
        var current = record
        while true {
            guard let memory = current.manifest.memory else {
                throw RecordError.badMemoryImage(reason: "record \(current.id) in \(current.directory) holds no page image")
            }
            guard seen.insert(current.id).inserted else {
                throw RecordError.badMemoryImage(reason: "the memory chain of \(record.id) loops back to \(current.id)")
            }
            chain.append(current)
            guard let parentID = memory.parent else { break }
            guard chain.count < Self.maxDepth else {
                throw RecordError.badMemoryImage(reason: "the memory chain of \(record.id) is deeper than \(Self.maxDepth)")
            }
            let parent = try Self.sibling(id: parentID, of: current)
            guard let parentMemory = parent.manifest.memory, parentMemory.layout == memory.layout else {
                throw RecordError.badMemoryImage(reason: "record \(current.id)'s memory parent \(parentID) has another RAM layout")
            }
            current = parent
        }
        records = chain
    }

    /// The record of id `id` in the tree `record` lies in: the sibling
    /// directory of that name, or else the sibling whose manifest says so.
    static func sibling(id: String, of record: Record) throws -> Record {
        guard Record.isPlainID(id) else { throw RecordError.notFound(id) }
        let tree = Files.parent(of: record.directory)
        let named = "\(tree)/\(id)"
        if Files.isDirectory(named), let found = try? Record.load(directory: named), found.id == id { return found }
        for name in (try? Files.list(tree)) ?? [] {
            if let found = try? Record.load(directory: "\(tree)/\(name)"), found.id == id { return found }
        }
        throw RecordError.badMemoryImage(
            reason: "record \(record.id)'s memory parent \(id) is not in \(tree) (a record's chain must stay in its records tree)")
    }

    /// The top record's image opened over the chain (each layer's backing
    /// given explicitly, whatever name its header holds).
    public func reader() throws -> MemoryImageReader {
        var below: QCOW2Image?
        for record in records.reversed() {
            guard let memory = record.manifest.memory else { throw RecordError.badMemoryImage(reason: "no page image in \(record.id)") }
            let path = "\(record.directory)/\(memory.image)"
            below = try QCOW2Image.open(path: path, writable: false, backing: below.map { .reader($0) } ?? .none)
        }
        guard let top = records.first, let memory = top.manifest.memory, let image = below else {
            throw RecordError.badMemoryImage(reason: "an empty memory chain")
        }
        return try MemoryImageReader(image: image, digestsPath: "\(top.directory)/\(memory.digests)", layout: memory.layout)
    }

    /// Writes the stream the record restores to `emit` (`MemoryImage.writeStream`).
    /// `checkingDigests` false: the pages' bytes are not hashed again, for a
    /// chain `Record.verifyRestorable` has just checked page by page.
    public func writeStream(checkingDigests: Bool = true, _ emit: (UnsafeRawBufferPointer) throws -> Void) throws -> Int64 {
        guard let top = records.first, let memory = top.manifest.memory else { throw RecordError.badMemoryImage(reason: "an empty memory chain") }
        let prologue = try Files.read("\(top.directory)/\(memory.prologue)", limit: 64 << 20)
        let epilogue = try Files.read("\(top.directory)/\(memory.epilogue)", limit: 256 << 20)
        return try MemoryImage.writeStream(reader: try reader(), prologue: prologue, epilogue: epilogue, checkingDigests: checkingDigests, emit)
    }
}
