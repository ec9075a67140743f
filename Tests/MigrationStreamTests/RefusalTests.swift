import MigrationStream
import Testing

/// Each refused construction, one stream each.
struct RefusalTests {
    typealias F = MigrationStream.Flag

    /// The prologue, a PART section header, then `body`.
    func inPart(_ body: (inout MigrationStreamBuilder) -> Void) -> [UInt8] {
        var b = Fixtures.prologue()
        b.section(ST.part, id: 1)
        body(&b)
        return b.bytes
    }

    let prologueLength = Fixtures.prologue().bytes.count

    @Test func header() {
        var b = MigrationStreamBuilder()
        b.header(magic: 0x5145_564e)
        #expect(Fixtures.error(b.bytes) == .badMagic(0x5145_564e))
        b = MigrationStreamBuilder()
        b.header(version: 2)
        #expect(Fixtures.error(b.bytes) == .badVersion(2))
    }

    @Test func ramFlags() {
        let at = UInt64(prologueLength + 5)
        #expect(Fixtures.error(inPart { $0.be64(F.multifdFlush) }) == .multifdFlush(at: at))
        #expect(Fixtures.error(inPart { $0.be64(F.xbzrle | F.continue) }) == .xbzrle(at: at))
        #expect(Fixtures.error(inPart { $0.be64(F.compressedPage) }) == .compressedPage(at: at))
        #expect(Fixtures.error(inPart { $0.be64(F.hook) }) == .hook(at: at))
        #expect(Fixtures.error(inPart { $0.be64(F.memSize) }) == .memSizeOutsideStart(at: at))
        #expect(Fixtures.error(inPart { $0.be64(F.obsoleteFull) }) == .unknownRAMFlags(1, at: at))
        #expect(Fixtures.error(inPart { $0.be64(F.zero | F.page) }) == .unknownRAMFlags(0xa, at: at))
        #expect(Fixtures.error(inPart { $0.be64(F.continue) }) == .unknownRAMFlags(0x20, at: at))
        #expect(Fixtures.error(inPart { $0.be64(0x400 | F.eos) }) == .eosWithOffset(0x400, at: at))
    }

    @Test func pages() {
        let at = UInt64(prologueLength + 5)
        #expect(Fixtures.error(inPart { $0.page(block: "nope", offset: 0, data: nil) }) == .unknownBlock(name: "nope", at: at))
        #expect(Fixtures.error(inPart { $0.be64(F.zero | F.continue); $0.u8(0) }) == .continueWithoutBlock(at: at))
        #expect(
            Fixtures.error(inPart { $0.page(block: "rom", offset: 2048, data: nil) })
                == .pageBeyondBlock(block: "rom", offset: 2048, length: 2048, at: at))
        #expect(
            Fixtures.error(inPart { $0.page(block: "rom", offset: 1 << 40, data: nil) })
                == .pageBeyondBlock(block: "rom", offset: 1 << 40, length: 2048, at: at))
        #expect(Fixtures.error(inPart { $0.page(block: "rom", offset: 0, data: nil, fill: 7) }) == .nonZeroFill(7, at: at + 12))
        // With 4096-byte pages, bits below 4096 are flags.
        var b = MigrationStreamBuilder(pageSize: 4096)
        b.header()
        b.ramStart(id: 1, blocks: [.init(name: "pc.ram", length: 8192)])
        let start = UInt64(b.bytes.count + 5)
        b.section(ST.part, id: 1)
        b.page(block: "pc.ram", offset: 0x400, data: nil)
        #expect(Fixtures.error(b.bytes, pageSize: 4096) == .unknownRAMFlags(0x402, at: start))
    }

    @Test func sections() {
        var b = Fixtures.prologue()
        b.sectionStart(type: ST.full, id: 2, name: "timer", version: 2)
        #expect(Fixtures.error(b.bytes) == .deviceSectionBeforeRAMEnd(name: "timer", at: UInt64(prologueLength)))

        b = Fixtures.prologue()
        b.sectionStart(id: 2, name: "dirty-bitmap", version: 1)
        #expect(Fixtures.error(b.bytes) == .iterableDeviceNotRAM(name: "dirty-bitmap", at: UInt64(prologueLength)))

        b = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        b.header()
        b.sectionStart(id: 0, name: "block", version: 1)
        #expect(Fixtures.error(b.bytes) == .iterableDeviceNotRAM(name: "block", at: 8))

        b = Fixtures.prologue()
        b.ramStart(id: 4, blocks: Fixtures.blocks)
        #expect(Fixtures.error(b.bytes) == .secondRAMStart(at: UInt64(prologueLength)))

        b = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        b.header()
        b.sectionStart(id: 0, name: "ram", version: 3)
        #expect(Fixtures.error(b.bytes) == .unsupportedRAMVersion(3, at: 8))

        b = Fixtures.prologue()
        b.section(ST.part, id: 2)
        #expect(Fixtures.error(b.bytes) == .unknownSectionID(2, at: UInt64(prologueLength)))

        b = Fixtures.prologue()
        b.u8(0x09)
        #expect(Fixtures.error(b.bytes) == .unknownSectionType(9, at: UInt64(prologueLength)))

        for type in [ST.eof, ST.vmDescription, ST.configuration, ST.subsection] {
            b = Fixtures.prologue()
            b.u8(type)
            #expect(Fixtures.error(b.bytes) == .unexpectedSection(type: type, at: UInt64(prologueLength)))
        }
        b = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        b.header()
        b.section(ST.part, id: 1)
        #expect(Fixtures.error(b.bytes) == .unexpectedSection(type: ST.part, at: 8))
    }

    @Test func footers() {
        var b = Fixtures.prologue()
        b.section(ST.part, id: 1)
        b.be64(F.eos)
        b.section(ST.part, id: 1)   // no footer where the stream has them
        #expect(Fixtures.error(b.bytes) == .missingFooter(found: ST.part, at: UInt64(prologueLength + 13)))
        b = Fixtures.prologue()
        b.section(ST.part, id: 1)
        b.be64(F.eos)
        b.u8(ST.footer)
        b.be32(5)
        #expect(Fixtures.error(b.bytes) == .badFooter(expected: 1, found: 5, at: UInt64(prologueLength + 13)))
    }

    @Test func commands() {
        var b = Fixtures.prologue()
        b.command(MigrationStream.Command.postcopyAdvise, data: Array(repeating: 0, count: 16))
        #expect(Fixtures.error(b.bytes) == .unsupportedCommand(3, at: UInt64(prologueLength)))
        for command in [MigrationStream.Command.openReturnPath, MigrationStream.Command.ping, MigrationStream.Command.postcopyListen,
                        MigrationStream.Command.postcopyRun, MigrationStream.Command.packaged, 0, 12, 0xffff] {
            b = Fixtures.prologue()
            b.command(command)
            #expect(Fixtures.error(b.bytes) == .unsupportedCommand(command, at: UInt64(prologueLength)))
        }
        b = Fixtures.prologue()
        b.command(MigrationStream.Command.switchoverStart, data: [1])
        #expect(Fixtures.error(b.bytes) == .commandLength(command: 11, length: 1, at: UInt64(prologueLength)))
        b = Fixtures.prologue()
        b.command(MigrationStream.Command.switchoverStart)
        b.command(MigrationStream.Command.switchoverStart)
        #expect(Fixtures.error(b.bytes) == .commandOutOfPlace(11, at: UInt64(prologueLength + 5)))
        b = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        b.header()
        b.command(MigrationStream.Command.switchoverStart)
        #expect(Fixtures.error(b.bytes) == .commandOutOfPlace(11, at: 8))
        b = Fixtures.prologue()
        b.command(MigrationStream.Command.switchoverStart)
        b.section(ST.part, id: 1)
        #expect(Fixtures.error(b.bytes) == .partAfterSwitchover(at: UInt64(prologueLength + 5)))
    }

    @Test func configuration() {
        let caps = MigrationStreamBuilder.subsection("configuration/capabilities", body: [0, 0, 0, 1, 10] + Array("mapped-ram".utf8))
        var b = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        b.header()
        b.configuration(machine: "pc", subsections: caps)
        // header 8, type 1, length 4, "pc", 0x05, name 1 + 26, version 4, count 4, length 1
        let capabilityAt: UInt64 = 52
        #expect(Fixtures.error(b.bytes) == .unsupportedCapability(name: "mapped-ram", at: capabilityAt))
        b = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        b.header()
        b.configuration(machine: "pc", subsections: MigrationStreamBuilder.subsection("configuration/x", body: []))
        guard case .unknownConfigurationSubsection(name: "configuration/x", _)? = Fixtures.error(b.bytes) else {
            Issue.record("unknown subsection accepted")
            return
        }
        b = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        b.header()
        b.configuration(machine: "pc", subsections: MigrationStreamBuilder.subsection("configuration/target-page-bits", body: [0, 0, 0, 12]))
        guard case .targetPageBits(12, expected: 10, _)? = Fixtures.error(b.bytes) else {
            Issue.record("wrong page bits accepted")
            return
        }
        b = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        b.header()
        b.u8(ST.configuration)
        b.be32(0x10000)
        #expect(Fixtures.error(b.bytes) == .configurationNameTooLong(0x10000, at: 9))
    }

    @Test func blockList() {
        func start(_ body: (inout MigrationStreamBuilder) -> Void) -> [UInt8] {
            var b = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
            b.header()
            b.sectionStart(id: 1, name: "ram", version: 4)
            body(&b)
            return b.bytes
        }
        let at: UInt64 = 25  // header 8, START 1, id 4, "ram" 1 + 3, instance 4, version 4
        #expect(Fixtures.error(start { $0.be64(F.eos) }) == .memSizeExpected(flags: F.eos, at: at))
        #expect(
            Fixtures.error(start { $0.be64(4096 | F.memSize); $0.string("a"); $0.be64(8192) })
                == .blockListMismatch(total: 4096, sum: 8192, at: at + 8))
        #expect(
            Fixtures.error(start { $0.be64(8192 | F.memSize); $0.string("a"); $0.be64(4096); $0.string("a"); $0.be64(4096) })
                == .duplicateBlock(name: "a", at: at + 18))
        #expect(Fixtures.error(start { $0.be64(8192 | F.memSize); $0.u8(0) }) == .emptyBlockName(at: at + 8))
        #expect(
            Fixtures.error(start { $0.be64(4096 | F.memSize); $0.string("a"); $0.be64(4096); $0.page(block: "a", offset: 0, data: nil) })
                == .pageInStartSection(at: at + 18))
    }

    @Test func afterAnErrorEveryCallThrowsIt() {
        var parser = MigrationStreamParser(pageSize: 4096)
        var log = MigrationStreamEventLog()
        #expect(throws: MigrationStreamError.badMagic(0)) { try parser.consume([UInt8](repeating: 0, count: 8), into: &log) }
        #expect(throws: MigrationStreamError.badMagic(0)) { try parser.consume([1], into: &log) }
        #expect(throws: MigrationStreamError.badMagic(0)) { try parser.finish() }
    }
}
