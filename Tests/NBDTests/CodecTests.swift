import Testing

@testable import NBDProtocol

/// Hex fixtures and round trips of every message.
@Suite struct CodecTests {
    static func hex(_ text: String) -> [UInt8] {
        let digits = Array(text.filter { !$0.isWhitespace })
        return stride(from: 0, to: digits.count - 1, by: 2).compactMap { UInt8(String(digits[$0...$0 + 1]), radix: 16) }
    }

    @Test func theGreetingIsNBDMAGICThenIHAVEOPTThenFixedNewstyleAndNoZeroes() throws {
        let greeting = NBDGreeting().encoded()
        #expect(greeting == Self.hex("4e42444d41474943  49484156454f5054  0003"))
        #expect(try NBDGreeting.decode(greeting).flags == [.fixedNewstyle, .noZeroes])
        #expect(throws: NBDProtocolError.badReplyMagic(0, atByte: 0)) { try NBDGreeting.decode([UInt8](repeating: 0, count: 18)) }
    }

    @Test func everyOptionRoundTrips() throws {
        let options: [NBDOption] = [
            .exportName("disk"), .exportName(""), .abort, .list,
            .info(NBDInfoRequest(name: "disk", items: [.export, .name, .description, .blockSize])),
            .go(NBDInfoRequest(name: "é", items: [])), .go(NBDInfoRequest(name: "", items: [NBDInfoType(rawValue: 77)])),
            .structuredReply, .other(.startTLS, data: []), .other(.setMetaContext, data: [1, 2, 3]),
            .other(NBDOptionCode(rawValue: 0xdead_beef), data: [9]),
        ]
        for option in options {
            let bytes = option.encoded()
            let magic = bigEndian(UInt64.self, in: bytes, at: 0)
            let code = try #require(bigEndian(UInt32.self, in: bytes, at: 8))
            let length = try #require(bigEndian(UInt32.self, in: bytes, at: 12))
            #expect(magic == NBD.optionMagic)
            #expect(Int(length) == bytes.count - NBD.optionHeaderSize)
            let parsed = NBDOption.parse(code: NBDOptionCode(rawValue: code), data: Array(bytes.dropFirst(16)))
            #expect(parsed == .success(option), "\(option)")
        }
    }

    @Test func theGoOptionHasTheSpecsLayout() {
        let go = NBDOption.go(NBDInfoRequest(name: "disk", items: [.blockSize]))
        #expect(go.encoded() == Self.hex("49484156454f5054 00000007 0000000c 00000004 6469736b 0001 0003"))
    }

    @Test func malformedGoDataIsRefusedNotTrusted() {
        // The name length claims more bytes than the option holds.
        #expect(NBDOption.parse(code: .go, data: Self.hex("000000ff 6469736b 0000")).failureType == .errInvalid)
        // Fewer than six bytes.
        #expect(NBDOption.parse(code: .info, data: [0, 0]).failureType == .errInvalid)
        // The item count does not match the bytes that follow.
        #expect(NBDOption.parse(code: .go, data: Self.hex("00000000 0002 0003")).failureType == .errInvalid)
        // A name with a NUL, and one that is not UTF-8.
        #expect(NBDOption.parse(code: .go, data: Self.hex("00000002 6100 0000")).failureType == .errInvalid)
        #expect(NBDOption.parse(code: .go, data: Self.hex("00000002 c328 0000")).failureType == .errInvalid)
        // A name over 4096 bytes.
        let long = [0, 0, 0x10, 0x01] + [UInt8](repeating: 0x61, count: 4097) + [0, 0]
        #expect(NBDOption.parse(code: .go, data: long).failureType == .errTooBig)
        // LIST and STRUCTURED_REPLY take no data; ABORT ignores it.
        #expect(NBDOption.parse(code: .list, data: [1]).failureType == .errInvalid)
        #expect(NBDOption.parse(code: .structuredReply, data: [1]).failureType == .errInvalid)
        #expect(NBDOption.parse(code: .abort, data: [1, 2]) == .success(.abort))
    }

    @Test func everyCommandRoundTrips() throws {
        let types: [NBDCommandType] = [.read, .write, .disconnect, .flush, .trim, .cache, .writeZeroes, .blockStatus, NBDCommandType(rawValue: 0xffff)]
        for (i, type) in types.enumerated() {
            let request = NBDRequest(
                type: type, flags: NBDCommandFlags(rawValue: UInt16(i)), cookie: 0x0102_0304_0506_0700 | UInt64(i),
                offset: UInt64(i) << 33, length: UInt32(i * 512))
            let header = request.encodedHeader()
            #expect(header.count == NBDRequest.headerSize)
            #expect(try NBDRequest.decodeHeader(header) == request)
        }
        let read = NBDRequest(type: .read, flags: .fua, cookie: 0xabcd, offset: 0x1000, length: 512)
        #expect(read.encodedHeader() == Self.hex("25609513 0001 0000 000000000000abcd 0000000000001000 00000200"))
    }

    @Test func everyErrnoRoundTripsInASimpleReply() throws {
        let values: [NBDErrno?] = [nil, .notPermitted, .io, .noMemory, .invalid, .noSpace, .overflow, .notSupported, .shutdown]
        for value in values {
            let reply = NBDSimpleReply(cookie: 0xfeed, error: value)
            #expect(try NBDSimpleReply.decode(reply.encoded()) == reply)
        }
        #expect(NBDSimpleReply(cookie: 7, error: .invalid).encoded() == Self.hex("67446698 00000016 0000000000000007"))
        #expect(NBDErrno.shutdown.rawValue == 108 && NBDErrno.overflow.rawValue == 75 && NBDErrno.notSupported.rawValue == 95)
    }

    @Test func optionRepliesAndInfoPayloadsRoundTrip() throws {
        let infos: [NBDInfo] = [
            .export(size: 1 << 40, flags: [.hasFlags, .sendFlush]), .name("disk"), .description("a disk"),
            .blockSize(minimum: 1, preferred: 4096, maximum: 1 << 25), .unknown(NBDInfoType(rawValue: 9), [1, 2]),
        ]
        for info in infos {
            let reply = NBDOptionReply.info(.go, info)
            let encoded = reply.encoded()
            let decoded = try #require(try NBDOptionReply.decode(encoded))
            #expect(decoded.consumed == encoded.count)
            #expect(decoded.reply == reply)
            #expect(try NBDInfo.decode(decoded.reply.data) == info)
        }
        let server = NBDOptionReply.server(name: "disk", description: "details")
        #expect(try server.serverEntry() == ("disk", "details"))
        #expect(NBDOptionReply.ack(.list).encoded() == Self.hex("0003e889045565a9 00000003 00000001 00000000"))
        // Partial replies need more bytes; a wrong magic is an error.
        #expect(try NBDOptionReply.decode(Array(server.encoded().dropLast())) == nil)
        #expect(throws: NBDProtocolError.self) { try NBDOptionReply.decode([UInt8](repeating: 1, count: 20)) }
    }

    @Test func theExportNameReplyIsPaddedUnlessNoZeroes() throws {
        let reply = NBDExportNameReply(size: 4096, flags: [.hasFlags, .readOnly])
        #expect(reply.encoded(noZeroes: true) == Self.hex("0000000000001000 0003"))
        #expect(reply.encoded(noZeroes: false).count == 10 + 124)
        #expect(try NBDExportNameReply.decode(reply.encoded(noZeroes: false), noZeroes: false) == reply)
    }

    @Test func errorMessagesNameTheProblemAndItsPositionInHex() {
        #expect(
            NBDProtocolError.badRequestMagic(0xdead_beef, atByte: 0x1234).description
                == "bad request magic 0xdeadbeef at byte 0x1234 (expected 0x25609513)")
        #expect(NBDProtocolError.badOptionMagic(1, atByte: 4).description.hasPrefix("bad option magic 0x1 at byte 0x4"))
    }

    @Test func blockSizesFollowTheSpecsConstraints() {
        #expect(NBDBlockSizes.standard.minimum == 1 && NBDBlockSizes.standard.preferred == 4096)
        #expect(NBDBlockSizes.standard.maximum == 32 << 20)
        #expect(NBDBlockSizes(minimum: 512, preferred: 4096, maximum: 1 << 20) != nil)
        #expect(NBDBlockSizes(minimum: 3, preferred: 4096, maximum: 1 << 20) == nil)
        #expect(NBDBlockSizes(minimum: 1 << 17, preferred: 1 << 17, maximum: 1 << 20) == nil)
        #expect(NBDBlockSizes(minimum: 1, preferred: 256, maximum: 1 << 20) == nil)
        #expect(NBDBlockSizes(minimum: 1, preferred: 4096, maximum: 1024) == nil)
    }

    @Test func transmissionFlagsFollowTheCapabilities() {
        let writable = NBDExportInfo(name: "w", size: 1, capabilities: .writable)
        #expect(
            writable.transmissionFlags
                == [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .canMultiConn])
        // Trim and write-zeroes are never offered on a read-only export.
        let readOnly = NBDExportInfo(name: "r", size: 1, capabilities: [.readOnly, .trim, .writeZeroes, .flush])
        #expect(readOnly.transmissionFlags == [.hasFlags, .readOnly, .sendFlush])
        #expect(NBDExportInfo.problem(withName: "ok") == nil)
        #expect(NBDExportInfo.problem(withName: "a\u{0}b") != nil)
        #expect(NBDExportInfo.problem(withName: String(repeating: "x", count: 4097)) != nil)
    }
}

extension Result where Success == NBDOption, Failure == NBDOptionRefusal {
    var failureType: NBDReplyType? {
        if case .failure(let refusal) = self { return refusal.type }
        return nil
    }
}
