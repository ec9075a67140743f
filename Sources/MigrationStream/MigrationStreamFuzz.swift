/// The body of the libFuzzer target (scripts/fuzz-stream) and of the
/// regression tests that replay its findings.
///
/// Input layout: byte 0 chooses the mode. Bit 7 set: the rest is a program
/// for `generate`, which writes a stream that is mostly valid (blocks,
/// PART sections, pages of every kind, the switch-over, the END section,
/// a tail; or a background snapshot's: the tail right after a PART
/// section) with occasional damage, so that the round trip is reached
/// often. Bit 7 clear: the rest is the stream itself. Bit 6: page size
/// 1024 instead of 4096. Low bits: the seed of the chunk split points.
///
/// Every stream is parsed whole, cut at pseudo-random points and drip-fed
/// one byte at a time; the three event logs and outcomes must be equal.
/// A stream that parses is rebuilt from its kept pieces and parsed again:
/// the same blocks, prologue, epilogue and last version of every page,
/// with no repeated page. A thrown `MigrationStreamError` is an accepted
/// outcome; a trap is a finding.
public enum MigrationStreamFuzz {
    public static func exercise(_ input: [UInt8]) {
        guard let selector = input.first else { return }
        let pageSize = selector & 0x40 != 0 ? 1024 : 4096
        let body = Array(input.dropFirst())
        let stream = selector & 0x80 != 0 ? generate(body, pageSize: pageSize) : body

        let whole = run(stream, pageSize: pageSize, cuts: [])
        var state = UInt64(selector) &* 0x9E37_79B9_7F4A_7C15 | 1
        var cuts: [Int] = []
        var at = 0
        while at < stream.count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            at += 1 + Int(state % UInt64(2 * pageSize + 16))
            cuts.append(at)
        }
        let split = run(stream, pageSize: pageSize, cuts: cuts)
        if whole != split { trap("cutting the stream changed the outcome") }
        if stream.count <= 40_000 {
            let drip = run(stream, pageSize: pageSize, cuts: Array(stride(from: 1, to: stream.count, by: 1)))
            if whole != drip { trap("feeding one byte at a time changed the outcome") }
        }
        guard whole.error == nil else { return }
        check(whole.log, pageSize: pageSize)
        roundTrip(stream, pageSize: pageSize)
    }

    struct Outcome: Equatable {
        var log: MigrationStreamEventLog.Event.Log
        var error: MigrationStreamError?
    }

    static func run(_ stream: [UInt8], pageSize: Int, cuts: [Int]) -> Outcome {
        var parser = MigrationStreamParser(pageSize: pageSize)
        var log = MigrationStreamEventLog()
        var failure: MigrationStreamError?
        stream.withUnsafeBytes { all in
            var start = 0
            do throws(MigrationStreamError) {
                for end in cuts + [stream.count] where end > start && end <= stream.count {
                    try parser.consume(UnsafeRawBufferPointer(rebasing: all[start..<end]), into: &log)
                    start = end
                }
                try parser.finish()
            } catch {
                failure = error
            }
        }
        return Outcome(log: .init(log.events), error: failure)
    }

    /// Pages lie inside their blocks, the block list comes once, before any page.
    static func check(_ log: MigrationStreamEventLog.Event.Log, pageSize: Int) {
        var blocks: [MigrationStream.Block]?
        for event in log.events {
            switch event {
            case .blocks(let b):
                if blocks != nil { trap("two block lists") }
                blocks = b
            case .page(let block, let offset, let data):
                guard let blocks, blocks.indices.contains(block) else { trap("page of an unknown block") }
                if offset % UInt64(pageSize) != 0 || offset + UInt64(pageSize) > blocks[block].length { trap("page outside its block") }
                if case .data(let bytes) = data, bytes.count != pageSize { trap("page of the wrong size") }
            case .verbatim(let bytes, _):
                if bytes.isEmpty { trap("empty verbatim event") }
            }
        }
    }

    static func roundTrip(_ stream: [UInt8], pageSize: Int) {
        var first = MigrationStreamRecorder()
        do {
            try MigrationStreamParser.parse(stream, pageSize: pageSize, into: &first)
        } catch { trap("second parse failed: \(error)") }
        let rebuilt: [UInt8]
        do {
            rebuilt = try MigrationStreamWriter.rebuild(
                prologue: first.prologue, pages: first.pages, epilogue: first.epilogue, pageSize: pageSize)
        } catch { trap("rebuild refused kept pieces: \(error)") }
        var second = MigrationStreamRecorder()
        do {
            try MigrationStreamParser.parse(rebuilt, pageSize: pageSize, into: &second)
        } catch { trap("the rebuilt stream does not parse: \(error)") }
        if second.blocks != first.blocks { trap("round trip changed the blocks") }
        if second.prologue != first.prologue { trap("round trip changed the prologue") }
        if second.epilogue != first.epilogue { trap("round trip changed the epilogue") }
        if second.pages != first.pages { trap("round trip changed the pages") }
        if second.dataRecords + second.zeroRecords != first.pages.count { trap("rebuilt stream repeats pages") }
        // At most one more PART header, EOS and footer than the original.
        if rebuilt.count > stream.count + 18 { trap("rebuilt stream larger than the original") }
    }

    /// Writes a stream from a program of bytes (see the type's comment).
    public static func generate(_ program: [UInt8], pageSize: Int) -> [UInt8] {
        var next = program.makeIterator()
        func byte() -> Int { Int(next.next() ?? 0) }
        var b = MigrationStreamBuilder(pageSize: pageSize, footers: byte() & 1 == 0)
        let names = ["pc.ram", "/rom@etc/acpi/tables", "pc.bios"]
        let blocks = (0...(byte() % 3)).map { MigrationStream.Block(name: names[$0], length: UInt64(1 + byte() % 6) * UInt64(pageSize)) }
        b.header()
        let configuration = byte()
        if configuration & 1 == 0 {
            b.configuration(subsections: configuration & 2 == 0 ? [] : MigrationStreamBuilder.subsection("configuration/uuid", body: Array(repeating: 7, count: 16)))
        }
        b.ramStart(id: 3, blocks: blocks)
        var inPart = false
        var switched = false
        var steps = 0
        while let op = next.next(), steps < 64 {
            steps += 1
            switch op % 10 {
            case 0:
                if inPart { b.endSection(id: 3) }
                b.section(MigrationStream.SectionType.part, id: 3)
                inPart = true
            case 1:
                if inPart { b.endSection(id: 3) }
                inPart = false
                if !switched { b.command(MigrationStream.Command.switchoverStart) }
                switched = true
                b.section(MigrationStream.SectionType.end, id: 3)
                inPart = true
            case 2:
                // Damage: one byte somewhere changed.
                if !b.bytes.isEmpty { b.bytes[byte() * 97 % b.bytes.count] ^= UInt8(truncatingIfNeeded: 1 + byte()) }
            default:
                if !inPart {
                    b.section(switched ? MigrationStream.SectionType.end : MigrationStream.SectionType.part, id: 3)
                    inPart = true
                }
                let block = blocks[byte() % blocks.count]
                let offset = UInt64(byte() % Int(block.length / UInt64(pageSize))) * UInt64(pageSize)
                let fill = UInt8(truncatingIfNeeded: byte())
                b.page(block: block.name, offset: offset, data: op & 0x10 == 0 ? nil : Array(repeating: fill, count: pageSize), named: op & 0x20 != 0)
            }
            if switched && inPart && op % 10 != 1 && op & 0x40 != 0 { break }
        }
        if !switched && inPart && byte() & 1 == 1 {
            // A background snapshot's shape: the device state right after
            // the last PART section, no switch-over, no END section.
            b.endSection(id: 3)
            b.tail()
            return b.bytes
        }
        if !switched {
            if inPart { b.endSection(id: 3) }
            b.command(MigrationStream.Command.switchoverStart)
            b.section(MigrationStream.SectionType.end, id: 3)
        }
        b.endSection(id: 3)
        b.tail()
        return b.bytes
    }

    static func trap(_ message: String) -> Never {
        fatalError("MigrationStreamFuzz: \(message)")
    }
}

extension MigrationStreamEventLog.Event {
    /// A log compared as a whole.
    struct Log: Equatable {
        var events: [MigrationStreamEventLog.Event]
        init(_ events: [MigrationStreamEventLog.Event]) { self.events = events }
    }
}
