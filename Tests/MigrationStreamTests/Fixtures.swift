import MigrationStream

typealias Event = MigrationStreamEventLog.Event
typealias ST = MigrationStream.SectionType

/// Hand-built streams with 1024-byte pages (small) unless told otherwise.
enum Fixtures {
    static let pageSize = 1024
    static let blocks = [
        MigrationStream.Block(name: "pc.ram", length: 4096),
        MigrationStream.Block(name: "rom", length: 2048),
    ]

    static func page(_ fill: UInt8, size: Int = pageSize) -> [UInt8] { Array(repeating: fill, count: size) }

    /// Header, configuration, RAM START: the prologue.
    static func prologue(footers: Bool = true, configuration: Bool = true, subsections: [UInt8] = []) -> MigrationStreamBuilder {
        var b = MigrationStreamBuilder(pageSize: pageSize, footers: footers)
        b.header()
        if configuration { b.configuration(subsections: subsections) }
        b.ramStart(id: 1, blocks: blocks)
        return b
    }

    /// A complete stream: two PART sections (a page sent twice, CONTINUE
    /// within and across sections, a ZERO page), the switch-over, an END
    /// section with one page, a tail.
    static func stream(footers: Bool = true, switchover: Bool = true) -> [UInt8] {
        var b = prologue(footers: footers)
        b.section(ST.part, id: 1)
        b.page(block: "pc.ram", offset: 0, data: page(1))
        b.page(block: "pc.ram", offset: 1024, data: nil)
        b.page(block: "rom", offset: 1024, data: page(2))
        b.endSection(id: 1)
        b.section(ST.part, id: 1)
        b.page(block: "rom", offset: 0, data: page(3))          // CONTINUE across sections
        b.page(block: "pc.ram", offset: 0, data: page(4))       // sent again
        b.endSection(id: 1)
        if switchover { b.command(MigrationStream.Command.switchoverStart) }
        b.section(ST.end, id: 1)
        b.page(block: "pc.ram", offset: 3072, data: page(5))
        b.page(block: "pc.ram", offset: 1024, data: page(6))    // was zero
        b.endSection(id: 1)
        b.tail()
        return b.bytes
    }

    /// A background snapshot's stream: each page once, in PART sections,
    /// then the device state right after the last one (no SWITCHOVER_START,
    /// no END section), as QEMU's background snapshot writes it.
    static func snapshotStream(footers: Bool = true) -> [UInt8] {
        var b = prologue(footers: footers)
        b.section(ST.part, id: 1)
        b.page(block: "pc.ram", offset: 1024, data: page(1))
        b.page(block: "pc.ram", offset: 0, data: nil)
        b.endSection(id: 1)
        b.section(ST.part, id: 1)
        b.page(block: "pc.ram", offset: 3072, data: page(2))    // CONTINUE across sections
        b.page(block: "rom", offset: 0, data: page(3))
        b.endSection(id: 1)
        b.tail()
        return b.bytes
    }

    static func parse(_ stream: [UInt8], pageSize: Int = pageSize) -> (events: [Event], error: MigrationStreamError?) {
        var log = MigrationStreamEventLog()
        do {
            try MigrationStreamParser.parse(stream, pageSize: pageSize, into: &log)
            return (log.events, nil)
        } catch {
            return (log.events, error)
        }
    }

    static func error(_ stream: [UInt8], pageSize: Int = pageSize) -> MigrationStreamError? { parse(stream, pageSize: pageSize).error }

    /// Parses `stream` fed in the given pieces.
    static func parse(_ stream: [UInt8], cuts: [Int], pageSize: Int = pageSize) -> (events: [Event], error: MigrationStreamError?) {
        var parser = MigrationStreamParser(pageSize: pageSize)
        var log = MigrationStreamEventLog()
        var start = 0
        do {
            for end in cuts + [stream.count] where end > start {
                try parser.consume(Array(stream[start..<end]), into: &log)
                start = end
            }
            try parser.finish()
            return (log.events, nil)
        } catch {
            return (log.events, error)
        }
    }
}
