import CEVMSystem
import Crypto
import Foundation
import MigrationStream
import QCOW2

/// Where each RAM block of a guest lies in a memory image: the blocks QEMU
/// announced in the stream's RAM setup, in that order, each at an offset
/// aligned to `alignment`, so a guest page has one fixed image offset.
public struct RAMLayout: Codable, Sendable, Equatable {
    public struct Block: Codable, Sendable, Equatable {
        /// QEMU's RAM block id ("pc.ram", "/rom@etc/acpi/tables", ...).
        public var name: String
        /// Its used length in bytes, as the stream announced it.
        public var length: UInt64
        /// Where its first byte lies in the memory image.
        public var offset: UInt64
    }

    /// The target page size (4096 on x86): the unit of every record.
    public var pageSize: UInt64
    public var blocks: [Block]

    /// Block offsets are aligned to 2 MiB: a block's pages never share an
    /// image cluster or an L2 table's range with another block's.
    public static let alignment: UInt64 = 2 << 20

    public init(pageSize: UInt64, blocks: [(name: String, length: UInt64)]) throws(RecordError) {
        guard pageSize >= 512, pageSize <= 1 << 21, pageSize & (pageSize - 1) == 0 else {
            throw .badMemoryImage(reason: "page size \(pageSize) is not a power of two in 512 B...2 MiB")
        }
        guard !blocks.isEmpty else { throw .badMemoryImage(reason: "no RAM block") }
        self.pageSize = pageSize
        var offset: UInt64 = 0
        var laid: [Block] = []
        var names = Set<String>()
        for block in blocks {
            guard names.insert(block.name).inserted else { throw .badMemoryImage(reason: "RAM block '\(block.name)' appears twice") }
            guard block.length > 0, block.length % pageSize == 0, block.length <= 1 << 46 else {
                throw .badMemoryImage(reason: "RAM block '\(block.name)' has length \(block.length), not a positive multiple of \(pageSize) up to 64 TiB")
            }
            laid.append(Block(name: block.name, length: block.length, offset: offset))
            offset += (block.length + Self.alignment - 1) / Self.alignment * Self.alignment
        }
        self.blocks = laid
    }

    /// The memory image's virtual size.
    public var imageSize: UInt64 {
        guard let last = blocks.last else { return 0 }
        return last.offset + (last.length + Self.alignment - 1) / Self.alignment * Self.alignment
    }

    /// The number of page slots of the image (holes between blocks included).
    public var pageSlots: Int { Int(imageSize / pageSize) }

    /// The number of guest pages (the blocks' lengths).
    public var guestPages: Int { blocks.reduce(0) { $0 + Int($1.length / pageSize) } }

    /// The image page index of a block's page, checked.
    public func slot(block: Int, offset: UInt64) throws(RecordError) -> Int {
        guard blocks.indices.contains(block) else { throw .badMemoryImage(reason: "no RAM block #\(block)") }
        let b = blocks[block]
        guard offset % pageSize == 0, offset < b.length else {
            throw .badMemoryImage(reason: "offset \(offset) is not a page of RAM block '\(b.name)' (\(b.length) bytes)")
        }
        return Int((b.offset + offset) / pageSize)
    }

    /// Checks a layout read back from a manifest (it is input).
    public func validate() throws(RecordError) {
        let again = try RAMLayout(pageSize: pageSize, blocks: blocks.map { ($0.name, $0.length) })
        guard again == self else { throw .badMemoryImage(reason: "the RAM block offsets are not the canonical layout") }
    }
}

/// The content of each page slot of a memory image as its chain restores
/// it, as 16 bytes: all zero for a zero page, else the first 16 bytes of
/// the page's SHA-256 (never all zero). A record keeps these for its whole
/// chain (`memory.digest`), so the next record can tell by content which
/// pages changed without reading this one's.
public struct PageDigests: Sendable, Equatable {
    public static let width = 16
    static let magic: [UInt8] = Array("CEVMPGD1".utf8)
    public private(set) var bytes: [UInt8]

    /// Every slot a zero page (what an image with no data restores).
    public init(slots: Int) { bytes = [UInt8](repeating: 0, count: slots * Self.width) }

    public var slots: Int { bytes.count / Self.width }

    public func isZero(_ slot: Int) -> Bool {
        let base = slot * Self.width
        for i in 0..<Self.width where bytes[base + i] != 0 { return false }
        return true
    }

    func equals(_ slot: Int, _ digest: Digest16) -> Bool {
        let base = slot * Self.width
        return withUnsafeBytes(of: digest) { d in
            for i in 0..<Self.width where bytes[base + i] != d[i] { return false }
            return true
        }
    }

    mutating func set(_ slot: Int, _ digest: Digest16) {
        let base = slot * Self.width
        withUnsafeBytes(of: digest) { d in
            for i in 0..<Self.width { bytes[base + i] = d[i] }
        }
    }

    /// The digest of one page's bytes (zero for an all-zero page).
    static func of(_ page: UnsafeRawBufferPointer) -> Digest16 {
        if MemoryImage.isAllZero(page) { return Digest16() }
        var digest = Digest16()
        withUnsafeMutableBytes(of: &digest) { out in
            let full = SHA256.hash(data: page)
            var i = 0
            for byte in full where i < PageDigests.width {
                out[i] = byte
                i += 1
            }
            // Never all zero: that means "zero page".
            if out.allSatisfy({ $0 == 0 }) { out[PageDigests.width - 1] = 1 }
        }
        return digest
    }

    /// The file form: magic, be64 slot count, the digests.
    public func encoded() -> [UInt8] {
        var out = Self.magic
        let count = UInt64(slots)
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: count >> UInt64(shift))) }
        out += bytes
        return out
    }

    public static func decode(_ data: [UInt8], expectedSlots: Int, path: String) throws(RecordError) -> PageDigests {
        guard data.count >= 16, Array(data[0..<8]) == magic else {
            throw .corruptManifest(path: path, reason: "not a page digest file (no CEVMPGD1 magic)")
        }
        var count: UInt64 = 0
        for i in 8..<16 { count = count << 8 | UInt64(data[i]) }
        guard count == UInt64(expectedSlots), data.count - 16 == expectedSlots * width else {
            throw .corruptManifest(
                path: path, reason: "holds \(count) page digests in \(data.count - 16) bytes; the layout has \(expectedSlots) pages")
        }
        var digests = PageDigests(slots: 0)
        digests.bytes = Array(data[16...])
        return digests
    }

    public static func read(path: String, expectedSlots: Int) throws -> PageDigests {
        let data = try Files.read(path, limit: 16 + expectedSlots * width)
        return try decode(data, expectedSlots: expectedSlots, path: path)
    }
}

/// 16 bytes, a value type the digest table compares against.
struct Digest16: Equatable {
    var a: UInt64 = 0
    var b: UInt64 = 0
}

/// A record's guest memory as a qcow2 image whose guest offsets are RAM
/// offsets (`RAMLayout`): one cluster per target page, zero pages cost no
/// data, and an incremental record is an overlay whose backing file is its
/// parent's image, named relatively. Docs/record-format.md has the layout.
public enum MemoryImage {
    public static let fileName = "memory.qcow2"
    public static let digestFileName = "memory.digest"

    /// What a writer kept.
    public struct Summary: Sendable, Equatable {
        /// Page records the stream carried (every version of every page).
        public var pagesSeen = 0
        /// Slots whose final content this record stores as data.
        public var dataPages = 0
        /// Slots this record stores as zero over a parent that had data.
        public var zeroPages = 0
        /// Slots whose final content equals what the parent chain restores
        /// (nothing stored for them).
        public var unchangedPages = 0
    }

    static func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let words = bytes.count / 8
        for i in 0..<words where base.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) != 0 { return false }
        for i in (words * 8)..<bytes.count where base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
        return true
    }

    /// Writes the stream a memory image restores, in chunks of about 1 MiB,
    /// to `emit`: the prologue, one RAM section with every page of the
    /// layout (data, or ZERO for a zero page), the epilogue. Returns the
    /// bytes written. `checkingDigests`: as `MemoryImageReader.forEachPage`.
    public static func writeStream(
        reader: MemoryImageReader, prologue: [UInt8], epilogue: [UInt8], checkingDigests: Bool = true,
        _ emit: (UnsafeRawBufferPointer) throws -> Void
    ) throws -> Int64 {
        let layout = reader.layout
        var writer: MigrationStreamWriter
        do { writer = try MigrationStreamWriter(prologue: prologue, epilogue: epilogue, pageSize: Int(layout.pageSize)) } catch {
            throw RecordError.badMemoryImage(reason: "the record's stream pieces do not fit together: \(error)")
        }
        guard writer.blocks.map(\.name) == layout.blocks.map(\.name), writer.blocks.map(\.length) == layout.blocks.map(\.length) else {
            throw RecordError.badMemoryImage(reason: "the prologue's RAM blocks are not the layout's")
        }
        var total: Int64 = 0
        var out: [UInt8] = []
        out.reserveCapacity(1 << 20 + 8192)
        func drain(_ force: Bool) throws {
            guard force || out.count >= 1 << 20 else { return }
            try out.withUnsafeBytes { try emit($0) }
            total += Int64(out.count)
            out.removeAll(keepingCapacity: true)
        }
        out += prologue
        out += writer.partHeader()
        try reader.forEachPage(checkingDigests: checkingDigests) { block, offset, data in
            try writer.append(block: block, offset: offset, content: data.map { .data($0) } ?? .zero, to: &out)
            try drain(false)
        }
        out += writer.partEnd()
        out += epilogue
        try drain(true)
        return total
    }

    /// The cluster bits of an image whose clusters are pages of `pageSize`.
    static func clusterBits(_ pageSize: UInt64) -> UInt32 { UInt32(pageSize.trailingZeroBitCount) }
}

/// Writes one record's memory image as the stream's pages arrive: the last
/// version of each page wins, and a page whose final content equals what
/// the parent chain restores is not stored (compared by the page digests,
/// SHA-256 of the content). Runs of consecutive pages go to the image in
/// one write. Not thread-safe: one writer thread (the tee's).
public final class MemoryImageWriter {
    public let layout: RAMLayout
    public let path: String
    let image: QCOW2Image
    /// What the parent chain restores (all zero without a parent).
    let baseline: PageDigests
    /// What this record's chain restores, as the pages arrived so far.
    public private(set) var current: PageDigests
    /// Slots this image holds (data or a zero cluster).
    var stored: [Bool]
    public private(set) var summary = MemoryImage.Summary()
    /// A run of consecutive data pages not yet written.
    var run: [UInt8] = []
    var runStart: UInt64 = 0
    static let runLimit = 256 << 10
    /// The image read-only, to start its write-back as it grows, so that
    /// `finish`'s fsync finds little left to write.
    let writeback: Int32
    var sinceWriteback = 0
    static let writebackEvery = 32 << 20

    /// `parent`: the parent record's image, named relative to `path`'s
    /// directory (e.g. "../ID/memory.qcow2"), and its digests. Its layout
    /// must be this one.
    public init(path: String, layout: RAMLayout, parent: (imageName: String, digests: PageDigests)? = nil) throws {
        self.path = path
        self.layout = layout
        if let parent {
            guard parent.digests.slots == layout.pageSlots else {
                throw RecordError.badMemoryImage(reason: "the parent's digests cover \(parent.digests.slots) pages, the layout \(layout.pageSlots)")
            }
            baseline = parent.digests
        } else {
            baseline = PageDigests(slots: layout.pageSlots)
        }
        current = baseline
        stored = [Bool](repeating: false, count: layout.pageSlots)
        image = try QCOW2Image.create(
            path: path, virtualSize: layout.imageSize, clusterBits: MemoryImage.clusterBits(layout.pageSize),
            backingFile: parent?.imageName, backingFormat: parent == nil ? nil : "qcow2")
        run.reserveCapacity(Self.runLimit)
        writeback = open(path, O_RDONLY | O_CLOEXEC)
    }

    deinit { if writeback >= 0 { close(writeback) } }

    /// One page record of the stream: `data` is the page's bytes, nil for
    /// QEMU's ZERO record.
    public func page(block: Int, offset: UInt64, data: UnsafeRawBufferPointer?) throws {
        let slot = try layout.slot(block: block, offset: offset)
        if let data, data.count != Int(layout.pageSize) {
            throw RecordError.badMemoryImage(reason: "a page of \(data.count) bytes; the page size is \(layout.pageSize)")
        }
        summary.pagesSeen += 1
        let digest = data.map { PageDigests.of($0) } ?? Digest16()
        current.set(slot, digest)
        let at = UInt64(slot) * layout.pageSize
        if baseline.equals(slot, digest) {
            // The parent chain restores this content: store nothing, and
            // drop an earlier version this image holds.
            if stored[slot] {
                try flushRun()
                try image.discard(at: at, count: layout.pageSize)
                stored[slot] = false
            }
            return
        }
        stored[slot] = true
        if digest == Digest16() {
            try flushRun()
            try image.writeZeroes(at: at, count: layout.pageSize)
            return
        }
        guard let data else { return }
        if !run.isEmpty && (at != runStart + UInt64(run.count) || run.count >= Self.runLimit) { try flushRun() }
        if run.isEmpty { runStart = at }
        run.append(contentsOf: data)
    }

    func flushRun() throws {
        guard !run.isEmpty else { return }
        try run.withUnsafeBytes { try image.write($0, at: runStart) }
        sinceWriteback += run.count
        run.removeAll(keepingCapacity: true)
        if sinceWriteback >= Self.writebackEvery, writeback >= 0 {
            _ = Files.startWriteback(writeback)
            sinceWriteback = 0
        }
    }

    /// Writes what is pending, makes the image durable and writes the
    /// digest file beside it. Returns what the record holds.
    public func finish() throws -> MemoryImage.Summary {
        try flushRun()
        try image.flush()
        var summary = summary
        summary.dataPages = 0
        summary.zeroPages = 0
        summary.unchangedPages = 0
        for slot in 0..<layout.pageSlots {
            if stored[slot] {
                if current.isZero(slot) { summary.zeroPages += 1 } else { summary.dataPages += 1 }
            }
        }
        summary.unchangedPages = layout.guestPages - summary.dataPages - summary.zeroPages
        let directory = Files.parent(of: path)
        try Files.writeAtomically(current.encoded(), to: "\(directory)/\(MemoryImage.digestFileName)")
        self.summary = summary
        return summary
    }
}

/// Reads a memory image through its chain, page by page, for a restore.
public final class MemoryImageReader: Sendable {
    public let layout: RAMLayout
    let image: QCOW2Image
    public let digests: PageDigests

    /// The image at `path`, its chain as its header names it.
    public convenience init(path: String, layout: RAMLayout) throws {
        try layout.validate()
        let image = try QCOW2Image.open(path: path, writable: false)
        try self.init(image: image, digestsPath: "\(Files.parent(of: path))/\(MemoryImage.digestFileName)", layout: layout)
    }

    /// An image already opened over its chain, and the digests of its record.
    public init(image: QCOW2Image, digestsPath: String, layout: RAMLayout) throws {
        try layout.validate()
        self.layout = layout
        self.image = image
        guard image.virtualSize == layout.imageSize, image.clusterSize == layout.pageSize else {
            throw RecordError.badMemoryImage(
                reason: "\(image.path) is \(image.virtualSize) bytes in \(image.clusterSize)-byte clusters; the layout needs \(layout.imageSize) in \(layout.pageSize)")
        }
        digests = try PageDigests.read(path: digestsPath, expectedSlots: layout.pageSlots)
    }

    /// Calls `body` for every guest page in layout order: nil for a zero
    /// page, else its bytes (valid during the call). With `checkingDigests`
    /// (the default) each data page is checked against its digest: a chain
    /// that does not restore what was recorded is refused, not loaded into
    /// a guest. Without, the digests still say which pages are zero, but a
    /// data page's bytes are not hashed: for a reader whose chain was
    /// checked page by page already (`Record.verifyRestorable`).
    public func forEachPage(
        checkingDigests: Bool = true, _ body: (_ block: Int, _ offset: UInt64, _ data: UnsafeRawBufferPointer?) throws -> Void
    ) throws {
        let pageSize = Int(layout.pageSize)
        let chunkPages = 64
        var buffer = [UInt8](repeating: 0, count: pageSize * chunkPages)
        for (index, block) in layout.blocks.enumerated() {
            let pages = Int(block.length / layout.pageSize)
            var first = 0
            while first < pages {
                let count = min(chunkPages, pages - first)
                try buffer.withUnsafeMutableBytes { raw in
                    let at = block.offset + UInt64(first) * layout.pageSize
                    try image.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<(count * pageSize)]), at: at)
                    for i in 0..<count {
                        let slot = Int(at / layout.pageSize) + i
                        let offset = UInt64(first + i) * layout.pageSize
                        if digests.isZero(slot) {
                            try body(index, offset, nil)
                            continue
                        }
                        let page = UnsafeRawBufferPointer(rebasing: raw[(i * pageSize)..<((i + 1) * pageSize)])
                        guard !checkingDigests || digests.equals(slot, PageDigests.of(page)) else {
                            throw RecordError.badMemoryImage(
                                reason: "page \(offset) of RAM block '\(block.name)' does not match its digest in \(image.path)'s chain")
                        }
                        try body(index, offset, page)
                    }
                }
                first += count
            }
        }
    }
}
