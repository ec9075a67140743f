// Option haggling messages (proto.md "Fixed newstyle negotiation", "Option
// types", "Option reply types"): the client's option requests, the server's
// option replies, and the two fixed messages around them (the greeting and
// the `NBD_OPT_EXPORT_NAME` reply). Client-side encoders and decoders are
// here too, for tests and tools that speak to a server.
//
//   option request              option reply
//   +----------+--------+       +------------------+--------+------+--------+
//   | IHAVEOPT | option |       | 0x3e889045565a9  | option | type | length |
//   | 8        | 4      |       | 8                | 4      | 4    | 4      |
//   +----------+--------+       +------------------+--------+------+--------+
//   | length 4 | data   |       | data (length bytes)                       |
//   +----------+--------+       +-------------------------------------------+

/// The server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
public struct NBDGreeting: Sendable, Hashable {
    public var flags: NBDHandshakeFlags

    public init(flags: NBDHandshakeFlags = [.fixedNewstyle, .noZeroes]) {
        self.flags = flags
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(NBD.greetingSize)
        bytes.appendBigEndian(NBD.initMagic)
        bytes.appendBigEndian(NBD.optionMagic)
        bytes.appendBigEndian(flags.rawValue)
        return bytes
    }

    /// (Client side) decodes the first `NBD.greetingSize` bytes.
    public static func decode(_ bytes: some RandomAccessCollection<UInt8>) throws(NBDProtocolError) -> NBDGreeting {
        var reader = ByteReader(bytes)
        guard let magic = reader.u64(), let option = reader.u64(), let flags = reader.u16() else {
            throw .truncated(message: "greeting", needed: NBD.greetingSize, available: bytes.count)
        }
        guard magic == NBD.initMagic else { throw .badReplyMagic(magic, atByte: 0) }
        guard option == NBD.optionMagic else { throw .badReplyMagic(option, atByte: 8) }
        return NBDGreeting(flags: NBDHandshakeFlags(rawValue: flags))
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and the
/// information items the client asks for.
public struct NBDInfoRequest: Sendable, Hashable {
    public var name: String
    public var items: [NBDInfoType]

    public init(name: String, items: [NBDInfoType] = []) {
        self.name = name
        self.items = items
    }

    func encoded() -> [UInt8] {
        let nameBytes = Array(name.utf8)
        var bytes: [UInt8] = []
        bytes.appendBigEndian(UInt32(truncatingIfNeeded: nameBytes.count))
        bytes += nameBytes
        bytes.appendBigEndian(UInt16(truncatingIfNeeded: items.count))
        for item in items { bytes.appendBigEndian(item.rawValue) }
        return bytes
    }
}

/// An option request the server cannot act on, answered with an error reply
/// (the connection goes on).
public struct NBDOptionRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    public var type: NBDReplyType
    public var message: String

    public init(_ type: NBDReplyType, _ message: String) {
        self.type = type
        self.message = message
    }

    public var description: String { "\(type): \(message)" }
}

/// One option request, decoded.
public enum NBDOption: Sendable, Hashable {
    case exportName(String)
    case abort
    case list
    case info(NBDInfoRequest)
    case go(NBDInfoRequest)
    case structuredReply
    /// Any option this implementation does not act on, with its data.
    case other(NBDOptionCode, data: [UInt8])

    public var code: NBDOptionCode {
        switch self {
        case .exportName: .exportName
        case .abort: .abort
        case .list: .list
        case .info: .info
        case .go: .go
        case .structuredReply: .structuredReply
        case .other(let code, _): code
        }
    }

    /// The option's data as sent on the wire.
    public var data: [UInt8] {
        switch self {
        case .exportName(let name): Array(name.utf8)
        case .abort, .list, .structuredReply: []
        case .info(let request), .go(let request): request.encoded()
        case .other(_, let data): data
        }
    }

    /// (Client side) the whole request: header and data.
    public func encoded() -> [UInt8] {
        let data = self.data
        var bytes: [UInt8] = []
        bytes.reserveCapacity(NBD.optionHeaderSize + data.count)
        bytes.appendBigEndian(NBD.optionMagic)
        bytes.appendBigEndian(code.rawValue)
        bytes.appendBigEndian(UInt32(truncatingIfNeeded: data.count))
        bytes += data
        return bytes
    }

    /// Decodes the data of option `code`. Malformed data is a refusal (to be
    /// sent as an error reply), never a trap.
    public static func parse(code: NBDOptionCode, data: [UInt8]) -> Result<NBDOption, NBDOptionRefusal> {
        switch code {
        case .exportName:
            switch decodeString(data) {
            case .success(let name): return .success(.exportName(name))
            case .failure(let problem): return .failure(NBDOptionRefusal(.errInvalid, "export name \(problem)"))
            }
        case .abort:
            // proto.md: the server SHOULD ignore data sent with NBD_OPT_ABORT.
            return .success(.abort)
        case .list:
            guard data.isEmpty else {
                return .failure(NBDOptionRefusal(.errInvalid, "NBD_OPT_LIST takes no data (\(data.count) bytes sent)"))
            }
            return .success(.list)
        case .info, .go:
            return parseInfoRequest(code: code, data).map { code == .go ? .go($0) : .info($0) }
        case .structuredReply:
            guard data.isEmpty else {
                return .failure(
                    NBDOptionRefusal(.errInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data (\(data.count) bytes sent)"))
            }
            return .success(.structuredReply)
        default:
            return .success(.other(code, data: data))
        }
    }

    private static func parseInfoRequest(code: NBDOptionCode, _ data: [UInt8]) -> Result<NBDInfoRequest, NBDOptionRefusal> {
        var reader = ByteReader(data)
        // 32-bit name length, name, 16-bit count, count × 16-bit items.
        guard let nameLength = reader.u32() else {
            return .failure(NBDOptionRefusal(.errInvalid, "\(code) data is \(data.count) bytes, at least 6 needed"))
        }
        guard UInt64(nameLength) + 6 <= UInt64(data.count), let nameBytes = reader.take(Int(nameLength)) else {
            return .failure(
                NBDOptionRefusal(.errInvalid, "\(code) name length \(nameLength) exceeds its \(data.count) bytes of data"))
        }
        let name: String
        switch decodeString(nameBytes) {
        case .success(let text): name = text
        case .failure(.tooLong(let count)):
            return .failure(NBDOptionRefusal(.errTooBig, "export name of \(count) bytes exceeds \(NBD.maximumStringLength)"))
        case .failure(let problem):
            return .failure(NBDOptionRefusal(.errInvalid, "export name \(problem)"))
        }
        guard let count = reader.u16(), reader.remaining == Int(count) * 2 else {
            return .failure(
                NBDOptionRefusal(.errInvalid, "\(code) information request count does not match its data length"))
        }
        var items: [NBDInfoType] = []
        items.reserveCapacity(Int(count))
        while let item = reader.u16() { items.append(NBDInfoType(rawValue: item)) }
        return .success(NBDInfoRequest(name: name, items: items))
    }
}

/// One `NBD_REP_INFO` payload.
public enum NBDInfo: Sendable, Hashable {
    /// `NBD_INFO_EXPORT`: size and transmission flags (mandatory before ACK).
    case export(size: UInt64, flags: NBDTransmissionFlags)
    /// `NBD_INFO_NAME`: the canonical name.
    case name(String)
    /// `NBD_INFO_DESCRIPTION`.
    case description(String)
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum payload.
    case blockSize(minimum: UInt32, preferred: UInt32, maximum: UInt32)
    /// An information type this implementation does not know.
    case unknown(NBDInfoType, [UInt8])

    public var type: NBDInfoType {
        switch self {
        case .export: .export
        case .name: .name
        case .description: .description
        case .blockSize: .blockSize
        case .unknown(let type, _): type
        }
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(type.rawValue)
        switch self {
        case .export(let size, let flags):
            bytes.appendBigEndian(size)
            bytes.appendBigEndian(flags.rawValue)
        case .name(let text), .description(let text):
            bytes += limitedUTF8(text)
        case .blockSize(let minimum, let preferred, let maximum):
            bytes.appendBigEndian(minimum)
            bytes.appendBigEndian(preferred)
            bytes.appendBigEndian(maximum)
        case .unknown(_, let payload):
            bytes += payload
        }
        return bytes
    }

    /// (Client side) decodes the data of an `NBD_REP_INFO` reply.
    public static func decode(_ data: [UInt8]) throws(NBDProtocolError) -> NBDInfo {
        var reader = ByteReader(data)
        guard let raw = reader.u16() else {
            throw .truncated(message: "NBD_REP_INFO", needed: 2, available: data.count)
        }
        let type = NBDInfoType(rawValue: raw)
        switch type {
        case .export:
            guard data.count == 12, let size = reader.u64(), let flags = reader.u16() else {
                throw .malformedReply("NBD_INFO_EXPORT of \(data.count) bytes (12 expected)")
            }
            return .export(size: size, flags: NBDTransmissionFlags(rawValue: flags))
        case .name, .description:
            let text = String(decoding: data.dropFirst(2), as: UTF8.self)
            return type == .name ? .name(text) : .description(text)
        case .blockSize:
            guard data.count == 14, let minimum = reader.u32(), let preferred = reader.u32(), let maximum = reader.u32()
            else {
                throw .malformedReply("NBD_INFO_BLOCK_SIZE of \(data.count) bytes (14 expected)")
            }
            return .blockSize(minimum: minimum, preferred: preferred, maximum: maximum)
        default:
            return .unknown(type, Array(data.dropFirst(2)))
        }
    }
}

/// One option reply.
public struct NBDOptionReply: Sendable, Hashable {
    public var option: NBDOptionCode
    public var type: NBDReplyType
    public var data: [UInt8]

    public init(option: NBDOptionCode, type: NBDReplyType, data: [UInt8] = []) {
        self.option = option
        self.type = type
        self.data = data
    }

    public static func ack(_ option: NBDOptionCode) -> NBDOptionReply {
        NBDOptionReply(option: option, type: .ack)
    }

    /// An error reply carrying a message for the user (cut to 4096 bytes).
    public static func error(_ option: NBDOptionCode, _ type: NBDReplyType, _ message: String) -> NBDOptionReply {
        NBDOptionReply(option: option, type: type, data: limitedUTF8(message))
    }

    public static func info(_ option: NBDOptionCode, _ info: NBDInfo) -> NBDOptionReply {
        NBDOptionReply(option: option, type: .info, data: info.encoded())
    }

    /// `NBD_REP_SERVER` for `NBD_OPT_LIST`: the name, then the description as
    /// the human-readable details.
    public static func server(name: String, description: String) -> NBDOptionReply {
        let nameBytes = limitedUTF8(name)
        var data: [UInt8] = []
        data.appendBigEndian(UInt32(nameBytes.count))
        data += nameBytes
        data += limitedUTF8(description)
        return NBDOptionReply(option: .list, type: .server, data: data)
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(NBD.optionReplyHeaderSize + data.count)
        bytes.appendBigEndian(NBD.optionReplyMagic)
        bytes.appendBigEndian(option.rawValue)
        bytes.appendBigEndian(type.rawValue)
        bytes.appendBigEndian(UInt32(truncatingIfNeeded: data.count))
        bytes += data
        return bytes
    }

    /// The error message of an error reply.
    public var message: String { String(decoding: data, as: UTF8.self) }

    /// (Client side) the name and details of an `NBD_REP_SERVER` reply.
    public func serverEntry() throws(NBDProtocolError) -> (name: String, details: String) {
        var reader = ByteReader(data)
        guard type == .server, let length = reader.u32(), let name = reader.take(Int(length)) else {
            throw .malformedReply("\(type) is not a well-formed NBD_REP_SERVER")
        }
        let details = reader.take(reader.remaining) ?? []
        return (String(decoding: name, as: UTF8.self), String(decoding: details, as: UTF8.self))
    }

    /// (Client side) decodes one reply from the front of `bytes`: nil when
    /// the bytes hold only part of one, else the reply and the bytes it used.
    /// `maximumData` bounds the data length a server may announce.
    public static func decode(
        _ bytes: some RandomAccessCollection<UInt8>, atByte: UInt64 = 0, maximumData: Int = 1 << 20
    ) throws(NBDProtocolError) -> (reply: NBDOptionReply, consumed: Int)? {
        var reader = ByteReader(bytes)
        guard let magic = reader.u64(), let option = reader.u32(), let type = reader.u32(), let length = reader.u32()
        else { return nil }
        guard magic == NBD.optionReplyMagic else { throw .badReplyMagic(magic, atByte: atByte) }
        guard Int(length) <= maximumData else {
            throw .malformedReply("option reply announces \(length) bytes of data, limit \(maximumData)")
        }
        guard let data = reader.take(Int(length)) else { return nil }
        let reply = NBDOptionReply(
            option: NBDOptionCode(rawValue: option), type: NBDReplyType(rawValue: type), data: data)
        return (reply, reader.consumed)
    }
}

/// The reply that ends `NBD_OPT_EXPORT_NAME`: size, transmission flags and,
/// unless the client set `NBD_FLAG_C_NO_ZEROES`, 124 zero bytes.
public struct NBDExportNameReply: Sendable, Hashable {
    public var size: UInt64
    public var flags: NBDTransmissionFlags

    public init(size: UInt64, flags: NBDTransmissionFlags) {
        self.size = size
        self.flags = flags
    }

    public func encoded(noZeroes: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(size)
        bytes.appendBigEndian(flags.rawValue)
        if !noZeroes { bytes += [UInt8](repeating: 0, count: NBD.exportNameReplyPadding) }
        return bytes
    }

    /// (Client side) decodes the reply from the front of `bytes`.
    public static func decode(_ bytes: some RandomAccessCollection<UInt8>, noZeroes: Bool) throws(NBDProtocolError)
        -> NBDExportNameReply
    {
        let needed = 10 + (noZeroes ? 0 : NBD.exportNameReplyPadding)
        var reader = ByteReader(bytes)
        guard bytes.count >= needed, let size = reader.u64(), let flags = reader.u16() else {
            throw .truncated(message: "NBD_OPT_EXPORT_NAME reply", needed: needed, available: bytes.count)
        }
        return NBDExportNameReply(size: size, flags: NBDTransmissionFlags(rawValue: flags))
    }
}
