import Testing

@testable import NBDProtocol

/// Request framing and validation, no sockets.
@Suite struct RequestTests {
    static let size: UInt64 = 1 << 20

    static func session(
        _ capabilities: NBDExportCapabilities = .writable, size: UInt64 = size, sizes: NBDBlockSizes = .standard
    ) -> NBDSession {
        NBDSession(
            export: NBDExportInfo(name: "disk", size: size, capabilities: capabilities), clientFlags: [.fixedNewstyle],
            blockSizes: sizes, clientHonoursBlockSizes: true, streamOffset: 0)
    }

    static func request(_ type: NBDCommandType, _ flags: NBDCommandFlags = [], offset: UInt64 = 0, length: UInt32 = 512) -> NBDRequest {
        NBDRequest(type: type, flags: flags, cookie: 42, offset: offset, length: length)
    }

    /// Decodes everything in `bytes`, returning the events.
    static func decodeAll(_ bytes: [UInt8], _ decoder: inout NBDRequestDecoder) throws -> [NBDRequestDecoder.Event] {
        var events: [NBDRequestDecoder.Event] = []
        var rest = bytes[...]
        while let (consumed, event) = try decoder.decode(rest) {
            events.append(event)
            rest = rest.dropFirst(consumed)
        }
        return events
    }

    // MARK: Framing

    @Test func aWriteIsFramedWithItsPayload() throws {
        let write = Self.request(.write, length: 4)
        let read = Self.request(.read)
        var decoder = NBDRequestDecoder(maximumPayload: 1 << 25)
        let stream = write.encodedHeader() + [1, 2, 3, 4] + read.encodedHeader()
        #expect(try decoder.decode(stream) ?? (0, .dropped(0)) == (32, .request(write)))
        #expect(try decoder.decode(stream.dropFirst(32)) ?? (0, .dropped(0)) == (28, .request(read)))
        #expect(decoder.streamOffset == 60)
    }

    @Test func aTruncatedHeaderOrPayloadWaitsForMore() throws {
        var decoder = NBDRequestDecoder(maximumPayload: 1 << 25)
        let write = Self.request(.write, length: 4).encodedHeader()
        #expect(try decoder.decode(write.prefix(27)) == nil)
        #expect(try decoder.decode(write + [1, 2, 3]) == nil)
        #expect(decoder.streamOffset == 0)
    }

    @Test func badRequestMagicClosesWithItsPosition() throws {
        var decoder = NBDRequestDecoder(maximumPayload: 1 << 25, streamOffset: 0x100)
        let good = Self.request(.flush, length: 0).encodedHeader()
        var bad = good
        bad[3] = 0x14
        #expect(throws: NBDProtocolError.badRequestMagic(0x2560_9514, atByte: 0x100 + 28)) {
            var decoder = decoder
            _ = try Self.decodeAll(good + bad, &decoder)
        }
        _ = try decoder.decode(good)
    }

    /// A WRITE longer than the maximum payload has its data skipped without
    /// buffering it, is refused with EINVAL, and the next request is found.
    @Test func anOversizedWriteIsDroppedAndTheStreamStaysInStep() throws {
        let sizes = try #require(NBDBlockSizes(minimum: 1, preferred: 512, maximum: 1024))
        let session = Self.session(sizes: sizes)
        var decoder = NBDRequestDecoder(session: session, maximumDiscard: 4096)
        let oversized = Self.request(.write, length: 3000)
        let next = Self.request(.read, length: 16)
        let stream = oversized.encodedHeader() + [UInt8](repeating: 9, count: 3000) + next.encodedHeader()
        var events: [NBDRequestDecoder.Event] = []
        var rest = stream[...]
        // Fed 100 bytes at a time: nothing is held back for the dropped data.
        var fed = 0
        var buffer: [UInt8] = []
        while fed < stream.count || !buffer.isEmpty {
            let take = min(100, stream.count - fed)
            buffer += rest.prefix(take)
            rest = rest.dropFirst(take)
            fed += take
            while let (consumed, event) = try decoder.decode(buffer) {
                events.append(event)
                buffer.removeFirst(consumed)
            }
            #expect(buffer.count < 100 + NBDRequest.headerSize)
            if take == 0 { break }
        }
        let requests = events.filter { if case .dropped = $0 { false } else { true } }
        #expect(requests == [.oversizedWrite(oversized), .request(next)])
        #expect(session.validate(oversized) == .reject(.invalid, "NBD_CMD_WRITE of 3000 bytes exceeds the maximum payload 1024"))
    }

    @Test func aWriteLongerThanTheDiscardLimitCloses() {
        var decoder = NBDRequestDecoder(maximumPayload: 1024, maximumDiscard: 4096)
        #expect(throws: NBDProtocolError.writeTooLarge(length: 4097, limit: 4096, atByte: 0)) {
            _ = try decoder.decode(Self.request(.write, length: 4097).encodedHeader())
        }
    }

    /// Refused writes still consume their payload: the stream stays framed.
    @Test func aRefusedWriteStillConsumesItsPayload() throws {
        let session = Self.session([.readOnly])
        var decoder = NBDRequestDecoder(session: session)
        let write = Self.request(.write, length: 8)
        let events = try Self.decodeAll(write.encodedHeader() + [UInt8](repeating: 1, count: 8) + Self.request(.read).encodedHeader(), &decoder)
        #expect(events == [.request(write), .request(Self.request(.read))])
        #expect(session.validate(write) == .reject(.notPermitted, "NBD_CMD_WRITE on read-only export 'disk'"))
    }

    // MARK: Validation

    @Test func validRequestsBecomeCommands() {
        let session = Self.session()
        #expect(session.validate(Self.request(.read, offset: 512)) == .perform(.read(offset: 512, length: 512)))
        #expect(session.validate(Self.request(.write, .fua)) == .perform(.write(offset: 0, length: 512, fua: true)))
        #expect(session.validate(Self.request(.flush, length: 0)) == .perform(.flush))
        #expect(session.validate(Self.request(.trim, length: 4096)) == .perform(.trim(offset: 0, length: 4096, fua: false)))
        #expect(
            session.validate(Self.request(.writeZeroes, [.noHole, .fua]))
                == .perform(.writeZeroes(offset: 0, length: 512, fua: true, mayTrim: false)))
        #expect(session.validate(Self.request(.writeZeroes)) == .perform(.writeZeroes(offset: 0, length: 512, fua: false, mayTrim: true)))
        #expect(session.validate(Self.request(.disconnect, offset: 5, length: 5)) == .perform(.disconnect))
        // The last byte of the export, and a whole-export trim of the maximum u32 length.
        #expect(session.validate(Self.request(.read, offset: Self.size - 1, length: 1)) == .perform(.read(offset: Self.size - 1, length: 1)))
        let big = Self.session(size: 1 << 33)
        #expect(big.validate(Self.request(.trim, length: .max)) == .perform(.trim(offset: 0, length: Int(UInt32.max), fua: false)))
    }

    @Test func readLengthOverTheMaximumIsEINVAL() {
        let verdict = Self.session(size: 1 << 30).validate(Self.request(.read, length: (32 << 20) + 1))
        #expect(verdict == .reject(.invalid, "NBD_CMD_READ of 33554433 bytes exceeds the maximum payload 33554432"))
        #expect(Self.session(size: 1 << 30).validate(Self.request(.read, length: 32 << 20)) == .perform(.read(offset: 0, length: 32 << 20)))
    }

    @Test func offsetPlusLengthOverflowIsRefusedNotWrapped() {
        let session = Self.session()
        let offset = UInt64.max - 100
        #expect(session.validate(Self.request(.read, offset: offset)).errno == .invalid)
        #expect(session.validate(Self.request(.trim, offset: offset)).errno == .invalid)
        #expect(session.validate(Self.request(.write, offset: offset)).errno == .noSpace)
        #expect(session.validate(Self.request(.writeZeroes, offset: offset)).errno == .noSpace)
    }

    @Test func pastTheEndIsEINVALForReadsAndENOSPCForWrites() {
        let session = Self.session()
        #expect(session.validate(Self.request(.read, offset: Self.size - 511)).errno == .invalid)
        #expect(session.validate(Self.request(.write, offset: Self.size)).errno == .noSpace)
        #expect(session.validate(Self.request(.read, offset: Self.size + 1, length: 0)).errno == .invalid)
        // Zero length at the very end is within bounds and touches nothing.
        #expect(session.validate(Self.request(.read, offset: Self.size, length: 0)) == .succeed)
        #expect(session.validate(Self.request(.write, length: 0)) == .succeed)
    }

    @Test func writesToAReadOnlyExportAreEPERM() {
        let session = Self.session([.readOnly, .flush, .trim, .writeZeroes])
        #expect(session.validate(Self.request(.write)).errno == .notPermitted)
        #expect(session.validate(Self.request(.trim)).errno == .notPermitted)
        #expect(session.validate(Self.request(.writeZeroes)).errno == .notPermitted)
        // Even past the end: EPERM comes first.
        #expect(session.validate(Self.request(.write, offset: Self.size)).errno == .notPermitted)
        #expect(session.validate(Self.request(.read)) == .perform(.read(offset: 0, length: 512)))
        #expect(session.validate(Self.request(.flush, length: 0)) == .perform(.flush))
    }

    @Test func unknownAndUnnegotiatedCommandsAreEINVAL() {
        let session = Self.session()
        for type in [NBDCommandType.cache, .blockStatus, .resize, NBDCommandType(rawValue: 99)] {
            #expect(session.validate(Self.request(type)).errno == .invalid, "\(type)")
        }
        let bare = Self.session([])
        #expect(bare.validate(Self.request(.flush, length: 0)).errno == .invalid)
        #expect(bare.validate(Self.request(.trim)).errno == .invalid)
        #expect(bare.validate(Self.request(.writeZeroes)).errno == .invalid)
        #expect(bare.validate(Self.request(.write, .fua)).errno == .invalid)
    }

    @Test func flagsNotValidForTheCommandAreEINVAL() {
        let session = Self.session()
        #expect(session.validate(Self.request(.read, .noHole)).errno == .invalid)
        #expect(session.validate(Self.request(.read, .dontFragment)).errno == .invalid)
        #expect(session.validate(Self.request(.writeZeroes, .fastZero)).errno == .invalid)
        #expect(session.validate(Self.request(.read, NBDCommandFlags(rawValue: 0x8000))).errno == .invalid)
        // FUA is accepted on any command once offered (proto.md: even by ignoring it).
        #expect(session.validate(Self.request(.read, .fua)) == .perform(.read(offset: 0, length: 512)))
        #expect(session.validate(Self.request(.flush, .fua, length: 0)) == .perform(.flush))
    }

    @Test func flushWithAnOffsetOrLengthIsEINVAL() {
        #expect(Self.session().validate(Self.request(.flush, offset: 0, length: 1)).errno == .invalid)
        #expect(Self.session().validate(Self.request(.flush, offset: 512, length: 0)).errno == .invalid)
    }

    @Test func misalignedRequestsAreEINVALWhenTheMinimumIsLarger() throws {
        let sizes = try #require(NBDBlockSizes(minimum: 512, preferred: 4096, maximum: 1 << 20))
        let session = Self.session(sizes: sizes)
        #expect(session.validate(Self.request(.read, offset: 1)).errno == .invalid)
        #expect(session.validate(Self.request(.write, length: 100)).errno == .invalid)
        #expect(session.validate(Self.request(.read, offset: 1024, length: 1024)) == .perform(.read(offset: 1024, length: 1024)))
    }
}

extension NBDVerdict {
    var errno: NBDErrno? {
        if case .reject(let errno, _) = self { return errno }
        return nil
    }
}
