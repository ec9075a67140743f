import MigrationStream
import Testing

struct WriterTests {
    @Test(arguments: [true, false])
    func rebuildKeepsEveryPageOnce(footers: Bool) throws {
        var first = MigrationStreamRecorder()
        try MigrationStreamParser.parse(Fixtures.stream(footers: footers), pageSize: Fixtures.pageSize, into: &first)
        let rebuilt = try MigrationStreamWriter.rebuild(
            prologue: first.prologue, pages: first.pages, epilogue: first.epilogue, pageSize: Fixtures.pageSize)
        var second = MigrationStreamRecorder()
        try MigrationStreamParser.parse(rebuilt, pageSize: Fixtures.pageSize, into: &second)
        #expect(second.pages == first.pages)
        #expect(second.prologue == first.prologue && second.epilogue == first.epilogue)
        #expect(second.dataRecords + second.zeroRecords == first.pages.count)
        #expect(second.liveBytes == 5 + 8 + (footers ? 5 : 0))

        // Layout: prologue, PART, pages by block then offset, EOS, footer, epilogue.
        var expected = MigrationStreamBuilder(pageSize: Fixtures.pageSize, footers: footers)
        expected.bytes = first.prologue
        expected.section(ST.part, id: 1)
        expected.page(block: "pc.ram", offset: 0, data: Fixtures.page(4))
        expected.page(block: "pc.ram", offset: 1024, data: Fixtures.page(6))
        expected.page(block: "pc.ram", offset: 3072, data: Fixtures.page(5))
        expected.page(block: "rom", offset: 0, data: Fixtures.page(3))
        expected.page(block: "rom", offset: 1024, data: Fixtures.page(2))
        expected.endSection(id: 1)
        #expect(rebuilt == expected.bytes + first.epilogue)
    }

    @Test func refusesBadPieces() throws {
        var recorder = MigrationStreamRecorder()
        try MigrationStreamParser.parse(Fixtures.stream(), pageSize: Fixtures.pageSize, into: &recorder)
        let p = recorder.prologue
        let e = recorder.epilogue
        #expect(throws: MigrationStreamError.self) { try MigrationStreamWriter(prologue: Array(p.dropLast()), epilogue: e, pageSize: 1024) }
        #expect(throws: MigrationStreamError.self) { try MigrationStreamWriter(prologue: p + [2], epilogue: e, pageSize: 1024) }
        #expect(throws: MigrationStreamError.self) { try MigrationStreamWriter(prologue: p, epilogue: Array(e.prefix(20)), pageSize: 1024) }
        // An epilogue with a PART section or a page in it.
        var part = MigrationStreamBuilder(pageSize: 1024)
        part.section(ST.part, id: 1)
        part.endSection(id: 1)
        #expect(throws: MigrationStreamError.self) { try MigrationStreamWriter(prologue: p, epilogue: part.bytes + e, pageSize: 1024) }
        var page = MigrationStreamBuilder(pageSize: 1024)
        page.section(ST.end, id: 1)
        page.page(block: "rom", offset: 0, data: nil)
        page.endSection(id: 1)
        page.tail()
        #expect(throws: MigrationStreamError.self) { try MigrationStreamWriter(prologue: p, epilogue: page.bytes, pageSize: 1024) }

        var writer = try MigrationStreamWriter(prologue: p, epilogue: e, pageSize: 1024)
        var out: [UInt8] = []
        #expect(throws: MigrationStreamError.invalidPage(block: 2, offset: 0)) { try writer.append(block: 2, offset: 0, data: .zero, to: &out) }
        #expect(throws: MigrationStreamError.invalidPage(block: 1, offset: 2048)) { try writer.append(block: 1, offset: 2048, data: .zero, to: &out) }
        #expect(throws: MigrationStreamError.invalidPage(block: 1, offset: 512)) { try writer.append(block: 1, offset: 512, data: .zero, to: &out) }
        #expect(throws: MigrationStreamError.invalidPage(block: 1, offset: 0)) { try writer.append(block: 1, offset: 0, data: .data([1]), to: &out) }
        #expect(out.isEmpty)
    }

    @Test func emptyPageSet() throws {
        var recorder = MigrationStreamRecorder()
        try MigrationStreamParser.parse(Fixtures.stream(), pageSize: Fixtures.pageSize, into: &recorder)
        let rebuilt = try MigrationStreamWriter.rebuild(prologue: recorder.prologue, pages: [:], epilogue: recorder.epilogue, pageSize: 1024)
        #expect(Fixtures.error(rebuilt) == nil)
    }
}
