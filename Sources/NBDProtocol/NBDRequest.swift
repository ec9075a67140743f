// Transmission messages (proto.md "Request message", "Simple reply message").
//
//   request (28 bytes, then `length` bytes of data for WRITE)
//   +------------+-------+------+---------+---------+--------+
//   | 0x25609513 | flags | type | cookie  | offset  | length |
//   | 4          | 2     | 2    | 8       | 8       | 4      |
//   +------------+-------+------+---------+---------+--------+
//
//   simple reply (16 bytes, then `length` bytes of data for a successful READ)
//   +------------+-------+--------+
//   | 0x67446698 | error | cookie |
//   | 4          | 4     | 8      |
//   +------------+-------+--------+

/// A transmission request header.
public struct NBDRequest: Sendable, Hashable, CustomStringConvertible {
    public static let headerSize = 28

    public var flags: NBDCommandFlags
    public var type: NBDCommandType
    /// Opaque to the server; echoed in the reply (called "handle" in older texts).
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(type: NBDCommandType, flags: NBDCommandFlags = [], cookie: UInt64, offset: UInt64 = 0, length: UInt32 = 0) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    /// Bytes of data that follow this header on the wire.
    public var payloadLength: Int { type == .write ? Int(length) : 0 }

    public func encodedHeader() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.headerSize)
        bytes.appendBigEndian(NBD.requestMagic)
        bytes.appendBigEndian(flags.rawValue)
        bytes.appendBigEndian(type.rawValue)
        bytes.appendBigEndian(cookie)
        bytes.appendBigEndian(offset)
        bytes.appendBigEndian(length)
        return bytes
    }

    /// Decodes the header at the front of `bytes` (which must hold at least
    /// `headerSize` bytes). `atByte` is the stream position, for errors.
    public static func decodeHeader(_ bytes: some RandomAccessCollection<UInt8>, atByte: UInt64 = 0)
        throws(NBDProtocolError) -> NBDRequest
    {
        var reader = ByteReader(bytes)
        guard let magic = reader.u32(), let flags = reader.u16(), let type = reader.u16(),
            let cookie = reader.u64(), let offset = reader.u64(), let length = reader.u32()
        else {
            throw .truncated(message: "request header", needed: headerSize, available: bytes.count)
        }
        guard magic == NBD.requestMagic else { throw .badRequestMagic(magic, atByte: atByte) }
        return NBDRequest(
            type: NBDCommandType(rawValue: type), flags: NBDCommandFlags(rawValue: flags), cookie: cookie,
            offset: offset, length: length)
    }

    public var description: String {
        "\(type) cookie 0x\(hex(cookie)) offset 0x\(hex(offset)) length \(length)"
            + (flags.isEmpty ? "" : " flags 0x\(hex(flags.rawValue))")
    }
}

/// A simple reply header; a successful READ is followed by its data.
public struct NBDSimpleReply: Sendable, Hashable {
    public static let headerSize = 16

    /// Nil for success.
    public var error: NBDErrno?
    public var cookie: UInt64

    public init(cookie: UInt64, error: NBDErrno? = nil) {
        self.cookie = cookie
        self.error = error
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.headerSize)
        bytes.appendBigEndian(NBD.simpleReplyMagic)
        bytes.appendBigEndian(error?.rawValue ?? 0)
        bytes.appendBigEndian(cookie)
        return bytes
    }

    /// (Client side) decodes a reply header from the front of `bytes`; nil
    /// when fewer than `headerSize` bytes are there.
    public static func decode(_ bytes: some RandomAccessCollection<UInt8>, atByte: UInt64 = 0)
        throws(NBDProtocolError) -> NBDSimpleReply?
    {
        var reader = ByteReader(bytes)
        guard let magic = reader.u32(), let error = reader.u32(), let cookie = reader.u64() else { return nil }
        guard magic == NBD.simpleReplyMagic else { throw .badReplyMagic(UInt64(magic), atByte: atByte) }
        return NBDSimpleReply(cookie: cookie, error: error == 0 ? nil : NBDErrno(rawValue: error))
    }
}
