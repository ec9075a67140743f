import Testing

@testable import NBDProtocol

/// The handshake machine driven with bytes, no sockets.
@Suite struct HandshakeTests {
    static let catalog = NBDCatalog([
        NBDExportInfo(name: "disk", description: "the VM disk", size: 1 << 20, capabilities: .writable),
        NBDExportInfo(name: "ro", size: 4096, capabilities: [.readOnly]),
    ])

    static let clientFlags: [UInt8] = [0, 0, 0, 3]

    /// Feeds `bytes` in chunks of `chunk` bytes, acting on every step, until
    /// the input is used up or the handshake ends.
    struct Run {
        var machine: NBDHandshake
        var output: [UInt8] = []
        var outcome: NBDHandshake.Outcome?
        var leftover: [UInt8] = []

        init(_ bytes: [UInt8], chunk: Int = .max, configuration: NBDHandshake.Configuration = .init(), catalog: NBDCatalog = HandshakeTests.catalog) {
            machine = NBDHandshake(configuration: configuration)
            var buffer: [UInt8] = []
            var position = 0
            outer: while true {
                while true {
                    let step = machine.receive(buffer, catalog: catalog)
                    buffer.removeFirst(step.consumed)
                    output += step.output
                    if let end = step.outcome {
                        outcome = end
                        break outer
                    }
                    if step.needsMoreInput { break }
                }
                guard position < bytes.count else { break }
                let end = min(bytes.count, position + min(chunk, bytes.count))
                buffer += bytes[position..<end]
                position = end
            }
            leftover = buffer + bytes[position...]
        }

        /// The option replies in `output`.
        var replies: [NBDOptionReply] {
            var replies: [NBDOptionReply] = []
            var rest = output[...]
            while let (reply, used) = try? NBDOptionReply.decode(rest) {
                replies.append(reply)
                rest = rest.dropFirst(used)
            }
            return replies
        }
    }

    @Test func goAnswersExportInfoBlockSizesThenAckAndEntersTransmission() throws {
        let go = NBDOption.go(NBDInfoRequest(name: "disk", items: [.blockSize, .name, .description]))
        let request = NBDRequest(type: .read, cookie: 1, length: 512).encodedHeader()
        let run = Run(Self.clientFlags + go.encoded() + request)
        guard case .transmission(let session) = run.outcome else {
            Issue.record("no transmission: \(String(describing: run.outcome))")
            return
        }
        #expect(session.export.name == "disk")
        #expect(session.clientFlags == [.fixedNewstyle, .noZeroes])
        #expect(session.clientHonoursBlockSizes)
        #expect(session.streamOffset == UInt64(4 + go.encoded().count))
        // Bytes after the GO belong to the transmission phase.
        #expect(run.leftover == request)
        let types = run.replies.map(\.type)
        #expect(types == [.info, .info, .info, .info, .ack])
        let infos = try run.replies.dropLast().map { try NBDInfo.decode($0.data) }
        #expect(infos.contains(.export(size: 1 << 20, flags: NBDExportInfo(name: "", size: 0, capabilities: .writable).transmissionFlags)))
        #expect(infos.contains(.blockSize(minimum: 1, preferred: 4096, maximum: 32 << 20)))
        #expect(infos.contains(.name("disk")))
        #expect(infos.contains(.description("the VM disk")))
    }

    @Test func infoAnswersLikeGoButStaysInTheHandshake() {
        let run = Run(Self.clientFlags + NBDOption.info(NBDInfoRequest(name: "ro")).encoded())
        #expect(run.outcome == nil)
        #expect(run.machine.state == .haggling)
        #expect(run.replies.map(\.type) == [.info, .info, .ack])
    }

    @Test func unknownOptionThenAValidGoOnTheSameConnection() {
        let unknown = NBDOption.other(NBDOptionCode(rawValue: 0x99), data: [1, 2, 3]).encoded()
        let go = NBDOption.go(NBDInfoRequest(name: "disk")).encoded()
        for chunk in [1, 3, 1000] {
            let run = Run(Self.clientFlags + unknown + go, chunk: chunk)
            #expect(run.replies.first?.type == .errUnsupported)
            #expect(run.replies.first?.option == NBDOptionCode(rawValue: 0x99))
            #expect(run.replies.last?.type == .ack)
            guard case .transmission = run.outcome else {
                Issue.record("chunk \(chunk): no transmission")
                continue
            }
        }
    }

    @Test func structuredRepliesAndMetaContextsAreRefusedAsUnsupported() {
        let run = Run(
            Self.clientFlags + NBDOption.structuredReply.encoded() + NBDOption.other(.setMetaContext, data: [0, 0, 0, 0]).encoded()
                + NBDOption.other(.startTLS, data: []).encoded())
        #expect(run.replies.map(\.type) == [.errUnsupported, .errUnsupported, .errUnsupported])
        #expect(run.outcome == nil)
    }

    @Test func anUnknownExportIsErrUnknownForGoAndAHangUpForExportName() {
        let go = Run(Self.clientFlags + NBDOption.go(NBDInfoRequest(name: "nope")).encoded())
        #expect(go.replies.map(\.type) == [.errUnknown])
        #expect(go.replies.first?.message.contains("nope") == true)
        #expect(go.outcome == nil)

        let exportName = Run(Self.clientFlags + NBDOption.exportName("nope").encoded())
        #expect(exportName.output.isEmpty)
        #expect(exportName.outcome == .violation(.exportNameRefused(name: "nope", reason: "no such export")))
    }

    @Test func exportNameEndsWithSizeFlagsAndPaddingUnlessNoZeroes() {
        let padded = Run([0, 0, 0, 1] + NBDOption.exportName("ro").encoded())
        #expect(padded.output == NBDExportNameReply(size: 4096, flags: [.hasFlags, .readOnly]).encoded(noZeroes: false))
        guard case .transmission(let session) = padded.outcome else {
            Issue.record("no transmission")
            return
        }
        #expect(!session.clientHonoursBlockSizes)
        let bare = Run(Self.clientFlags + NBDOption.exportName("ro").encoded())
        #expect(bare.output.count == 10)
    }

    @Test func listNamesEveryExportThenAcks() throws {
        let run = Run(Self.clientFlags + NBDOption.list.encoded())
        #expect(run.replies.map(\.type) == [.server, .server, .ack])
        #expect(try run.replies[0].serverEntry() == ("disk", "the VM disk"))
        #expect(try run.replies[1].serverEntry() == ("ro", ""))
        let withData = Run(Self.clientFlags + NBDOption.other(.list, data: [1]).encoded())
        #expect(withData.replies.map(\.type) == [.errInvalid])
    }

    @Test func abortIsAcknowledgedThenTheConnectionEnds() {
        let run = Run(Self.clientFlags + NBDOption.abort.encoded() + [1, 2, 3])
        #expect(run.replies.map(\.type) == [.ack])
        #expect(run.outcome == .aborted)
        #expect(run.machine.state == .closed)
    }

    @Test func badOptionMagicClosesWithItsPosition() {
        var option = NBDOption.list.encoded()
        option[0] = 0x00
        let run = Run(Self.clientFlags + NBDOption.list.encoded() + option)
        let expectedMagic = NBD.optionMagic & 0x00ff_ffff_ffff_ffff
        #expect(run.outcome == .violation(.badOptionMagic(expectedMagic, atByte: 4 + 16)))
    }

    @Test func unknownClientFlagsClose() {
        let run = Run([0, 0, 0, 4])
        #expect(run.outcome == .violation(.unknownClientFlags(4)))
        #expect(run.output.isEmpty)
    }

    @Test func aTruncatedOptionHeaderWaitsForMore() {
        let go = NBDOption.go(NBDInfoRequest(name: "disk")).encoded()
        let run = Run(Self.clientFlags + go.prefix(15))
        #expect(run.outcome == nil && run.output.isEmpty)
        #expect(run.leftover.count == 15)
        let partialData = Run(Self.clientFlags + go.dropLast())
        #expect(partialData.outcome == nil && partialData.output.isEmpty)
    }

    /// 100 KiB of option data (over the 64 KiB limit) is skipped as it
    /// arrives, answered ERR_TOO_BIG, and the stream stays in step.
    @Test func aHugeOptionIsSkippedWithTooBigAndTheNextOptionWorks() {
        let length = 100 << 10
        var option = NBDOption.other(.go, data: []).encoded()
        option.replaceSubrange(12..<16, with: [0, UInt8(length >> 16), UInt8(length >> 8 & 0xff), 0])
        let huge = option + [UInt8](repeating: 0xee, count: length)
        let go = NBDOption.go(NBDInfoRequest(name: "disk")).encoded()
        let run = Run(Self.clientFlags + huge + go, chunk: 4096)
        #expect(run.replies.first?.type == .errTooBig)
        #expect(run.replies.first?.option == .go)
        guard case .transmission = run.outcome else {
            Issue.record("no transmission after the skipped option: \(String(describing: run.outcome))")
            return
        }
    }

    @Test func anOptionLongerThanTheSkipLimitCloses() {
        let header: [UInt8] = [0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff]
        let run = Run(Self.clientFlags + header)
        #expect(run.outcome == .violation(.optionTooLong(option: .info, length: 0xffff_ffff, limit: 1 << 20, atByte: 4)))
        // An over-long EXPORT_NAME cannot be answered: it closes at once.
        var exportName = header
        exportName[11] = 1
        exportName.replaceSubrange(12..<16, with: [0, 1, 0, 1])
        let named = Run(Self.clientFlags + exportName)
        #expect(named.outcome == .violation(.optionTooLong(option: .exportName, length: 65537, limit: 65536, atByte: 4)))
    }

    @Test func tooManyOptionsClose() {
        let configuration = NBDHandshake.Configuration(maximumOptions: 3)
        let list = NBDOption.list.encoded()
        let run = Run(Self.clientFlags + list + list + list + list, configuration: configuration)
        #expect(run.replies.filter { $0.type == .ack }.count == 3)
        #expect(run.outcome == .violation(.tooManyOptions(limit: 3)))
    }

    @Test func inputAfterTheHandshakeIsAViolation() {
        var machine = NBDHandshake()
        _ = machine.receive(Self.clientFlags, catalog: Self.catalog)
        _ = machine.receive(NBDOption.abort.encoded(), catalog: Self.catalog)
        #expect(machine.receive([1], catalog: Self.catalog).outcome == .violation(.handshakeOver))
    }

    /// Every byte boundary gives the same result as the whole stream.
    @Test func dripFeedingChangesNothing() {
        let stream = Self.clientFlags + NBDOption.list.encoded()
            + NBDOption.other(NBDOptionCode(rawValue: 42), data: [7]).encoded()
            + NBDOption.info(NBDInfoRequest(name: "nope")).encoded()
            + NBDOption.go(NBDInfoRequest(name: "ro", items: [.name])).encoded()
        let whole = Run(stream)
        for chunk in 1...9 {
            let drip = Run(stream, chunk: chunk)
            #expect(drip.output == whole.output && drip.outcome == whole.outcome, "chunk \(chunk)")
        }
    }
}
