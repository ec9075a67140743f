/// A violation that ends the connection: the peer broke a MUST of the
/// protocol, or the stream can no longer be framed.
///
/// Problems the protocol can answer without losing the stream (an unknown
/// option, a malformed `NBD_OPT_GO`, a request out of bounds, a write to a
/// read-only export...) are not errors: they become option error replies or
/// request error replies. Byte positions (`atByte`) count from the first byte
/// the peer sent on the connection.
public enum NBDProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The client flags set bits the server did not offer.
    case unknownClientFlags(UInt32)
    /// An option request did not start with IHAVEOPT.
    case badOptionMagic(UInt64, atByte: UInt64)
    /// Option data longer than the handshake is willing to skip (or any
    /// over-long `NBD_OPT_EXPORT_NAME`, which cannot be answered with an error).
    case optionTooLong(option: NBDOptionCode, length: UInt32, limit: Int, atByte: UInt64)
    /// More option requests than the handshake allows on one connection.
    case tooManyOptions(limit: Int)
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist or a name that
    /// is not valid; that option has no error reply, so the server must hang up.
    case exportNameRefused(name: String, reason: String)
    /// Input arrived after the handshake ended (a caller bug, or bytes after
    /// `NBD_OPT_ABORT`).
    case handshakeOver
    /// A transmission request did not start with `NBD_REQUEST_MAGIC`.
    case badRequestMagic(UInt32, atByte: UInt64)
    /// A WRITE announced a payload longer than the server will skip; the
    /// stream cannot be followed without reading it all.
    case writeTooLarge(length: UInt32, limit: Int, atByte: UInt64)
    /// (Client side) a server message ended early.
    case truncated(message: String, needed: Int, available: Int)
    /// (Client side) a server message started with the wrong magic.
    case badReplyMagic(UInt64, atByte: UInt64)
    /// (Client side) a server message is well framed but its content is not valid.
    case malformedReply(String)

    public var description: String {
        switch self {
        case .unknownClientFlags(let flags):
            return "client flags 0x\(hex(flags)) set bits the server did not offer (known: 0x\(hex(NBDClientFlags.known.rawValue)))"
        case .badOptionMagic(let magic, let at):
            return "bad option magic 0x\(hex(magic)) at byte 0x\(hex(at)) (expected IHAVEOPT 0x\(hex(NBD.optionMagic)))"
        case .optionTooLong(let option, let length, let limit, let at):
            return "\(option) with \(length) bytes of data at byte 0x\(hex(at)) exceeds the limit of \(limit) bytes"
        case .tooManyOptions(let limit):
            return "more than \(limit) options on one connection"
        case .exportNameRefused(let name, let reason):
            return "NBD_OPT_EXPORT_NAME '\(name)' refused: \(reason)"
        case .handshakeOver:
            return "input after the handshake ended"
        case .badRequestMagic(let magic, let at):
            return "bad request magic 0x\(hex(magic)) at byte 0x\(hex(at)) (expected 0x\(hex(NBD.requestMagic)))"
        case .writeTooLarge(let length, let limit, let at):
            return "NBD_CMD_WRITE at byte 0x\(hex(at)) announces \(length) bytes, more than the \(limit) the server skips"
        case .truncated(let message, let needed, let available):
            return "truncated \(message): needs \(needed) bytes, \(available) available"
        case .badReplyMagic(let magic, let at):
            return "bad reply magic 0x\(hex(magic)) at byte 0x\(hex(at))"
        case .malformedReply(let detail):
            return "malformed reply: \(detail)"
        }
    }
}
