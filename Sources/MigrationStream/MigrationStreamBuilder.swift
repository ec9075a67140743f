/// Writes migration streams by hand, field by field, for tests and the
/// fuzz target: valid ones and, through the raw writers, broken ones.
public struct MigrationStreamBuilder: Sendable {
    public typealias SectionType = MigrationStream.SectionType
    public typealias Flag = MigrationStream.Flag

    public var bytes: [UInt8] = []
    public let pageSize: Int
    public var footers: Bool
    /// The block of the last page record written (for `continue`).
    public private(set) var lastBlock: String?

    public init(pageSize: Int = 4096, footers: Bool = true) {
        self.pageSize = pageSize
        self.footers = footers
    }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func be16(_ v: UInt16) { bytes += [UInt8(v >> 8), UInt8(v & 0xff)] }
    public mutating func be32(_ v: UInt32) { MigrationStreamWriter.appendBE32(v, to: &bytes) }
    public mutating func be64(_ v: UInt64) { MigrationStreamWriter.appendBE64(v, to: &bytes) }
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        u8(UInt8(truncatingIfNeeded: utf8.count))
        bytes += utf8
    }

    public mutating func header(magic: UInt32 = MigrationStream.magic, version: UInt32 = MigrationStream.version) {
        be32(magic)
        be32(version)
    }

    /// The CONFIGURATION section: the machine name, then raw subsection bytes.
    public mutating func configuration(machine: String = "pc-q35-10.0", subsections: [UInt8] = []) {
        u8(SectionType.configuration)
        be32(UInt32(machine.utf8.count))
        bytes += Array(machine.utf8)
        bytes += subsections
    }

    /// A configuration subsection header (0x05, name, version 1).
    public static func subsection(_ name: String, body: [UInt8]) -> [UInt8] {
        var b = MigrationStreamBuilder()
        b.u8(SectionType.subsection)
        b.string(name)
        b.be32(1)
        return b.bytes + body
    }

    /// A START or FULL section header.
    public mutating func sectionStart(type: UInt8 = SectionType.start, id: UInt32, name: String, instance: UInt32 = 0, version: UInt32) {
        u8(type)
        be32(id)
        string(name)
        be32(instance)
        be32(version)
    }

    /// A PART or END section header.
    public mutating func section(_ type: UInt8, id: UInt32) {
        u8(type)
        be32(id)
    }

    /// The whole RAM START section: header, MEM_SIZE, the block list, EOS, footer.
    public mutating func ramStart(id: UInt32 = 1, blocks: [MigrationStream.Block]) {
        sectionStart(id: id, name: "ram", version: MigrationStream.ramVersion)
        be64(blocks.reduce(0) { $0 + $1.length } | Flag.memSize)
        for block in blocks {
            string(block.name)
            be64(block.length)
        }
        endSection(id: id)
    }

    /// EOS, then the footer when the stream has footers.
    public mutating func endSection(id: UInt32) {
        be64(Flag.eos)
        if footers {
            u8(SectionType.footer)
            be32(id)
        }
    }

    /// A page record: CONTINUE when `block` is the last one and `named` is false.
    public mutating func page(block: String, offset: UInt64, data: [UInt8]?, named: Bool = false, fill: UInt8 = 0) {
        var flags = data == nil ? Flag.zero : Flag.page
        let same = block == lastBlock && !named
        if same { flags |= Flag.continue }
        be64(offset | flags)
        if !same { string(block) }
        lastBlock = block
        if let data { bytes += data } else { u8(fill) }
    }

    public mutating func command(_ command: UInt16, data: [UInt8] = []) {
        u8(SectionType.command)
        be16(command)
        be16(UInt16(truncatingIfNeeded: data.count))
        bytes += data
    }

    /// A tail like QEMU's: one FULL device section, EOF, a VM description.
    public mutating func tail(id: UInt32 = 2, json: String = "{\"page_size\": 4096}") {
        sectionStart(type: SectionType.full, id: id, name: "timer", version: 2)
        be64(0x0123_4567_89ab_cdef)
        if footers {
            u8(SectionType.footer)
            be32(id)
        }
        u8(SectionType.eof)
        u8(SectionType.vmDescription)
        be32(UInt32(json.utf8.count))
        bytes += Array(json.utf8)
    }
}
