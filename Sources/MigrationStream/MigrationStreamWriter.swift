/// Rebuilds a stream QEMU's loader accepts from the pieces a record keeps:
///
///     prologue   header, CONFIGURATION, RAM START (block list, EOS, footer)
///     PART       one RAM PART section with every page: a block name on the
///                first record and whenever the block changes, CONTINUE
///                otherwise; then EOS and the footer (when the stream has them)
///     epilogue   SWITCHOVER_START, RAM END without pages (header, EOS,
///                footer), the tail (device sections, EOF, VM description);
///                a background snapshot's: the tail alone
///
/// The switch-over command stays in the epilogue: QEMU sends it after the
/// last PART section and before the END sections, and the pages it
/// preceded now all sit in the one PART section ahead of it.
public struct MigrationStreamWriter: Sendable {
    public typealias PageKey = MigrationStream.PageKey
    public typealias PageData = MigrationStream.PageData

    public let pageSize: Int
    public let blocks: [MigrationStream.Block]
    /// The RAM section's id, from the prologue.
    public let sectionID: UInt32
    /// Whether sections end with footers (as in the original stream).
    public let footers: Bool
    private var lastBlock = -1

    /// Checks both kept pieces: the prologue must end exactly after the RAM
    /// START section; the epilogue must follow a PART section and end in
    /// the tail with no page and no PART section of its own.
    public init(prologue: [UInt8], epilogue: [UInt8], pageSize: Int = 4096) throws(MigrationStreamError) {
        self.pageSize = pageSize
        var parser = MigrationStreamParser(pageSize: pageSize)
        var check = CheckingSink()
        do {
            try parser.consume(prologue, into: &check)
        } catch {
            throw .prologueIncomplete(error.description)
        }
        guard let footers = parser.endOfPrologue, let id = parser.ramSectionID, check.pages == 0 else {
            throw .prologueIncomplete("it does not end right after the RAM START section")
        }
        self.blocks = parser.blocks
        self.sectionID = id
        self.footers = footers
        var part = Self.header(sectionID: id)
        Self.appendEnd(sectionID: id, footers: footers, to: &part)
        do {
            try parser.consume(part, into: &check)
            check = CheckingSink()
            try parser.consume(epilogue, into: &check)
            try parser.finish()
        } catch {
            throw .epilogueInvalid(error.description)
        }
        if check.pages > 0 { throw .epilogueInvalid("it holds \(check.pages) page records") }
        if check.nonEpilogueBytes > 0 { throw .epilogueInvalid("it holds \(check.nonEpilogueBytes) bytes of PART sections") }
    }

    /// The bytes that open the PART section, written after the prologue.
    public func partHeader() -> [UInt8] { Self.header(sectionID: sectionID) }

    /// Appends one page record to `out`.
    public mutating func append(
        block: Int, offset: UInt64, content: MigrationStream.PageContent, to out: inout [UInt8]
    ) throws(MigrationStreamError) {
        guard blocks.indices.contains(block), offset % UInt64(pageSize) == 0,
            offset < blocks[block].length, blocks[block].length - offset >= UInt64(pageSize)
        else { throw .invalidPage(block: block, offset: offset) }
        var flags: UInt64
        switch content {
        case .zero: flags = MigrationStream.Flag.zero
        case .data(let bytes):
            guard bytes.count == pageSize else { throw .invalidPage(block: block, offset: offset) }
            flags = MigrationStream.Flag.page
        }
        if block == lastBlock { flags |= MigrationStream.Flag.continue }
        Self.appendBE64(offset | flags, to: &out)
        if block != lastBlock {
            let name = Array(blocks[block].name.utf8)
            out.append(UInt8(name.count))
            out.append(contentsOf: name)
            lastBlock = block
        }
        switch content {
        case .zero: out.append(0)
        case .data(let bytes): out.append(contentsOf: bytes)
        }
    }

    /// Appends an owned page.
    public mutating func append(block: Int, offset: UInt64, data: PageData, to out: inout [UInt8]) throws(MigrationStreamError) {
        switch data {
        case .zero: try append(block: block, offset: offset, content: .zero, to: &out)
        case .data(let bytes):
            var failure: MigrationStreamError?
            bytes.withUnsafeBytes { b in
                do throws(MigrationStreamError) { try append(block: block, offset: offset, content: .data(b), to: &out) } catch { failure = error }
            }
            if let failure { throw failure }
        }
    }

    /// The bytes that close the PART section (EOS, footer), written before the epilogue.
    public func partEnd() -> [UInt8] {
        var out: [UInt8] = []
        Self.appendEnd(sectionID: sectionID, footers: footers, to: &out)
        return out
    }

    /// The whole stream in memory: prologue, one PART section with `pages`
    /// in (block, offset) order, epilogue.
    public static func rebuild(
        prologue: [UInt8], pages: [PageKey: PageData], epilogue: [UInt8], pageSize: Int = 4096
    ) throws(MigrationStreamError) -> [UInt8] {
        var writer = try MigrationStreamWriter(prologue: prologue, epilogue: epilogue, pageSize: pageSize)
        var out = prologue
        out.reserveCapacity(prologue.count + epilogue.count + pages.count * (pageSize + 16) + 64)
        out += writer.partHeader()
        for (key, data) in pages.sorted(by: { $0.key < $1.key }) {
            try writer.append(block: key.block, offset: key.offset, data: data, to: &out)
        }
        out += writer.partEnd()
        out += epilogue
        return out
    }

    static func header(sectionID: UInt32) -> [UInt8] {
        var out: [UInt8] = [MigrationStream.SectionType.part]
        appendBE32(sectionID, to: &out)
        return out
    }

    static func appendEnd(sectionID: UInt32, footers: Bool, to out: inout [UInt8]) {
        appendBE64(MigrationStream.Flag.eos, to: &out)
        if footers {
            out.append(MigrationStream.SectionType.footer)
            appendBE32(sectionID, to: &out)
        }
    }

    static func appendBE32(_ v: UInt32, to out: inout [UInt8]) {
        for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }

    static func appendBE64(_ v: UInt64, to out: inout [UInt8]) {
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }

    struct CheckingSink: MigrationStreamSink {
        var pages = 0
        var nonEpilogueBytes = 0
        mutating func verbatim(_ bytes: UnsafeRawBufferPointer, region: MigrationStream.Region) {
            if region != .epilogue { nonEpilogueBytes += bytes.count }
        }
        mutating func blocks(_ blocks: [MigrationStream.Block]) {}
        mutating func page(block: Int, offset: UInt64, content: MigrationStream.PageContent) { pages += 1 }
    }
}
