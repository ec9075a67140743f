import MigrationStream
import Testing

struct ParserTests {
    @Test func parsesAHandBuiltStream() throws {
        let stream = Fixtures.stream()
        let (events, error) = Fixtures.parse(stream)
        #expect(error == nil)
        let pages = events.compactMap { e -> (Int, UInt64, MigrationStream.PageData)? in
            if case .page(let b, let o, let d) = e { return (b, o, d) }
            return nil
        }
        #expect(pages.map(\.0) == [0, 0, 1, 1, 0, 0, 0])
        #expect(pages.map(\.1) == [0, 1024, 1024, 0, 0, 3072, 1024])
        #expect(pages[1].2 == .zero)
        #expect(pages[6].2 == .data(Fixtures.page(6)))
        #expect(events.contains(.blocks(Fixtures.blocks)))
        // Regions alternate: prologue, live framing, epilogue last.
        let regions = events.compactMap { e -> MigrationStream.Region? in
            if case .verbatim(_, let r) = e { return r }
            return nil
        }
        #expect(regions.first == .prologue)
        #expect(regions.last == .epilogue)
        #expect(Set(regions) == [.prologue, .live, .epilogue])
        // The prologue is exactly the bytes up to the RAM START section's footer.
        let prologue = events.flatMap { e -> [UInt8] in
            if case .verbatim(let bytes, .prologue) = e { return bytes }
            return []
        }
        #expect(prologue == Fixtures.prologue().bytes)
    }

    @Test func recorderKeepsTheLastVersionOfEachPage() throws {
        var recorder = MigrationStreamRecorder()
        try MigrationStreamParser.parse(Fixtures.stream(), pageSize: Fixtures.pageSize, into: &recorder)
        #expect(recorder.blocks == Fixtures.blocks)
        #expect(recorder.pages.count == 5)
        #expect(recorder.pages[.init(block: 0, offset: 0)] == .data(Fixtures.page(4)))
        #expect(recorder.pages[.init(block: 0, offset: 1024)] == .data(Fixtures.page(6)))
        #expect(recorder.pages[.init(block: 1, offset: 0)] == .data(Fixtures.page(3)))
        #expect(recorder.dataRecords == 6 && recorder.zeroRecords == 1)
        #expect(recorder.prologue == Fixtures.prologue().bytes)
        // Epilogue: SWITCHOVER_START, END header, EOS, footer, tail.
        var epilogue = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        epilogue.command(MigrationStream.Command.switchoverStart)
        epilogue.section(ST.end, id: 1)
        epilogue.endSection(id: 1)
        epilogue.tail()
        #expect(recorder.epilogue == epilogue.bytes)
        #expect(recorder.liveBytes == 2 * (5 + 8 + 5))
    }

    @Test(arguments: [true, false])
    func everySplitPointGivesTheSameEvents(footers: Bool) {
        let stream = Fixtures.stream(footers: footers)
        let whole = Fixtures.parse(stream)
        #expect(whole.error == nil)
        for k in 0...stream.count {
            let split = Fixtures.parse(stream, cuts: [k])
            #expect(split.events == whole.events && split.error == nil, "split at \(k)")
        }
        let drip = Fixtures.parse(stream, cuts: Array(1..<stream.count))
        #expect(drip.events == whole.events && drip.error == nil)
    }

    @Test func streamWithoutFootersOrConfigurationOrSwitchover() {
        #expect(Fixtures.error(Fixtures.stream(footers: false)) == nil)
        #expect(Fixtures.error(Fixtures.stream(switchover: false)) == nil)
        var b = Fixtures.prologue(configuration: false)
        b.section(ST.end, id: 1)
        b.endSection(id: 1)
        b.tail()
        #expect(Fixtures.error(b.bytes) == nil)
    }

    @Test func configurationSubsections() {
        let uuid = MigrationStreamBuilder.subsection("configuration/uuid", body: Array(repeating: 9, count: 16))
        let bits = MigrationStreamBuilder.subsection("configuration/target-page-bits", body: [0, 0, 0, 10])
        let none = MigrationStreamBuilder.subsection("configuration/capabilities", body: [0, 0, 0, 0])
        for subsections in [uuid, bits, none, uuid + bits + none] {
            var b = Fixtures.prologue(subsections: subsections)
            b.section(ST.end, id: 1)
            b.endSection(id: 1)
            b.tail()
            #expect(Fixtures.error(b.bytes) == nil)
        }
    }

    @Test func everyTruncationIsReported() {
        let stream = Fixtures.stream()
        // The tail starts after the END section's footer.
        var ended = Fixtures.prologue()
        ended.bytes = Array(stream.prefix(stream.count - tailLength()))
        for k in 0..<ended.bytes.count + 1 {
            guard case .truncated(let place, let at)? = Fixtures.error(Array(stream.prefix(k))) else {
                Issue.record("prefix \(k) not reported truncated")
                continue
            }
            #expect(at == UInt64(k))
            #expect(!place.isEmpty)
        }
        #expect(Fixtures.error(Array(stream.prefix(ended.bytes.count + 1))) == nil)
        #expect(MigrationStreamError.truncated(in: "a page's data", at: 0x40).description == "truncated in a page's data at 0x40")
    }

    func tailLength() -> Int {
        var t = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        t.tail()
        return t.bytes.count
    }

    @Test func zeroPagesAndContinue() {
        var b = Fixtures.prologue()
        b.section(ST.part, id: 1)
        b.page(block: "rom", offset: 0, data: nil)
        b.page(block: "rom", offset: 1024, data: nil)
        b.page(block: "rom", offset: 1024, data: nil, named: true)   // named again: allowed
        b.endSection(id: 1)
        b.section(ST.end, id: 1)
        b.endSection(id: 1)
        b.tail()
        let (events, error) = Fixtures.parse(b.bytes)
        #expect(error == nil)
        #expect(events.filter { if case .page(1, _, .zero) = $0 { return true } else { return false } }.count == 3)
    }
}

/// Prints the parser's throughput on a synthetic stream (no assertion on
/// time: debug builds and shared machines vary; scripts/bench-stream
/// measures an optimised build).
struct ThroughputTests {
    struct Counting: MigrationStreamSink {
        var pages = 0
        mutating func verbatim(_ bytes: UnsafeRawBufferPointer, region: MigrationStream.Region) {}
        mutating func blocks(_ blocks: [MigrationStream.Block]) {}
        mutating func page(block: Int, offset: UInt64, content: MigrationStream.PageContent) { pages += 1 }
    }

    @Test func printsThroughput() throws {
        var b = MigrationStreamBuilder(pageSize: 4096)
        b.header()
        b.ramStart(id: 1, blocks: [.init(name: "pc.ram", length: 32 << 20)])
        b.section(ST.part, id: 1)
        let data = [UInt8](repeating: 0x5a, count: 4096)
        for page in 0..<(32 << 20) / 4096 { b.page(block: "pc.ram", offset: UInt64(page) * 4096, data: page % 8 == 0 ? nil : data) }
        b.endSection(id: 1)
        b.section(ST.end, id: 1)
        b.endSection(id: 1)
        b.tail()
        var sink = Counting()
        let clock = ContinuousClock()
        let elapsed = try clock.measure {
            var parser = MigrationStreamParser(pageSize: 4096)
            var at = 0
            while at < b.bytes.count {
                let end = min(b.bytes.count, at + 65_537)
                try parser.consume(Array(b.bytes[at..<end]), into: &sink)
                at = end
            }
            try parser.finish()
        }
        #expect(sink.pages == 8192)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print("MigrationStreamParser: \(b.bytes.count) bytes in 64 KiB+1 chunks at \(Int(Double(b.bytes.count) / seconds / 1e6)) MB/s (this build)")
    }
}

/// A background snapshot's stream (QEMU's `background-snapshot`): QEMU saves
/// the device state at the pause into a buffer and writes it after the last
/// PART section, with no SWITCHOVER_START and no RAM END section.
struct SnapshotStreamTests {
    func tail(footers: Bool = true) -> [UInt8] {
        var t = MigrationStreamBuilder(pageSize: Fixtures.pageSize, footers: footers)
        t.tail()
        return t.bytes
    }

    @Test(arguments: [true, false])
    func theTailBeginsAtTheFirstDeviceSectionAfterTheParts(footers: Bool) throws {
        let stream = Fixtures.snapshotStream(footers: footers)
        var parser = MigrationStreamParser(pageSize: Fixtures.pageSize)
        var recorder = MigrationStreamRecorder()
        try parser.consume(stream, into: &recorder)
        try parser.finish()
        #expect(parser.withoutRAMEnd && !parser.sawSwitchover && parser.isComplete)
        #expect(recorder.prologue == Fixtures.prologue(footers: footers).bytes)
        #expect(recorder.epilogue == tail(footers: footers), "the epilogue is the device state, EOF and VM description")
        #expect(recorder.pages.count == 4 && recorder.dataRecords == 3 && recorder.zeroRecords == 1)
        #expect(recorder.pages[.init(block: 0, offset: 0)] == .zero)
        #expect(recorder.pages[.init(block: 1, offset: 0)] == .data(Fixtures.page(3)))
        #expect(parser.tailBytes == UInt64(tail(footers: footers).count))

        // A pre-copy stream is not read that way.
        var precopy = MigrationStreamParser(pageSize: Fixtures.pageSize)
        var log = MigrationStreamEventLog()
        try precopy.consume(Fixtures.stream(footers: footers), into: &log)
        try precopy.finish()
        #expect(!precopy.withoutRAMEnd && precopy.sawSwitchover)
    }

    @Test func everySplitPointGivesTheSameEvents() {
        let stream = Fixtures.snapshotStream()
        let whole = Fixtures.parse(stream)
        #expect(whole.error == nil)
        for k in 0...stream.count {
            let split = Fixtures.parse(stream, cuts: [k])
            #expect(split.events == whole.events && split.error == nil, "split at \(k)")
        }
        // Up to the device section's type byte the stream is truncated.
        let pagesEnd = stream.count - tail().count
        for k in 0..<(pagesEnd + 1) {
            guard case .truncated? = Fixtures.error(Array(stream.prefix(k))) else {
                Issue.record("prefix \(k) not reported truncated")
                continue
            }
        }
        #expect(Fixtures.error(Array(stream.prefix(pagesEnd + 1))) == nil)
    }

    @Test func aDeviceSectionElsewhereIsStillRefused() throws {
        // Right after the RAM START section, before any PART section.
        var b = Fixtures.prologue()
        b.sectionStart(type: ST.full, id: 2, name: "timer", version: 2)
        #expect(Fixtures.error(b.bytes) == .deviceSectionBeforeRAMEnd(name: "timer", at: UInt64(Fixtures.prologue().bytes.count)))
        // After the switch-over, where the END section must come first.
        b = Fixtures.prologue()
        b.section(ST.part, id: 1)
        b.page(block: "pc.ram", offset: 0, data: nil)
        b.endSection(id: 1)
        b.command(MigrationStream.Command.switchoverStart)
        let at = UInt64(b.bytes.count)
        b.tail()
        #expect(Fixtures.error(b.bytes) == .deviceSectionBeforeRAMEnd(name: "timer", at: at))
        // A PART section after the device state is tail, not pages.
        var after = MigrationStreamRecorder()
        var more = MigrationStreamBuilder(pageSize: Fixtures.pageSize)
        more.section(ST.part, id: 1)
        more.page(block: "pc.ram", offset: 2048, data: Fixtures.page(9))
        more.endSection(id: 1)
        try MigrationStreamParser.parse(Fixtures.snapshotStream() + more.bytes, pageSize: Fixtures.pageSize, into: &after)
        #expect(after.pages.count == 4 && after.epilogue == tail() + more.bytes)
    }

    @Test(arguments: [true, false])
    func rebuildKeepsTheShape(footers: Bool) throws {
        var first = MigrationStreamRecorder()
        try MigrationStreamParser.parse(Fixtures.snapshotStream(footers: footers), pageSize: Fixtures.pageSize, into: &first)
        let rebuilt = try MigrationStreamWriter.rebuild(
            prologue: first.prologue, pages: first.pages, epilogue: first.epilogue, pageSize: Fixtures.pageSize)
        var expected = MigrationStreamBuilder(pageSize: Fixtures.pageSize, footers: footers)
        expected.bytes = first.prologue
        expected.section(ST.part, id: 1)
        expected.page(block: "pc.ram", offset: 0, data: nil)
        expected.page(block: "pc.ram", offset: 1024, data: Fixtures.page(1))
        expected.page(block: "pc.ram", offset: 3072, data: Fixtures.page(2))
        expected.page(block: "rom", offset: 0, data: Fixtures.page(3))
        expected.endSection(id: 1)
        #expect(rebuilt == expected.bytes + tail(footers: footers))
        var parser = MigrationStreamParser(pageSize: Fixtures.pageSize)
        var second = MigrationStreamRecorder()
        try parser.consume(rebuilt, into: &second)
        try parser.finish()
        #expect(parser.withoutRAMEnd && second.pages == first.pages && second.epilogue == first.epilogue)
    }
}
