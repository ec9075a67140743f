// Flag fields and code points (proto.md "Values"). Codes are structs over
// their raw value rather than enums so that a value this implementation does
// not know (an unknown option, an unknown command) can still be carried and
// answered.

/// Handshake flags: the 16 bits after IHAVEOPT in the server greeting.
public struct NBDHandshakeFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `NBD_FLAG_FIXED_NEWSTYLE` (bit 0).
    public static let fixedNewstyle = NBDHandshakeFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_NO_ZEROES` (bit 1).
    public static let noZeroes = NBDHandshakeFlags(rawValue: 1 << 1)
}

/// Client flags: the 32 bits the client sends after the greeting.
public struct NBDClientFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `NBD_FLAG_C_FIXED_NEWSTYLE` (bit 0).
    public static let fixedNewstyle = NBDClientFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_C_NO_ZEROES` (bit 1).
    public static let noZeroes = NBDClientFlags(rawValue: 1 << 1)
    /// Every flag a client may set against our greeting; any other bit closes
    /// the connection (proto.md "Client flags": the server MUST drop it).
    public static let known: NBDClientFlags = [.fixedNewstyle, .noZeroes]
}

/// Transmission flags: sent with the export size when option haggling ends.
public struct NBDTransmissionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `NBD_FLAG_HAS_FLAGS` (bit 0): always set.
    public static let hasFlags = NBDTransmissionFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_READ_ONLY` (bit 1).
    public static let readOnly = NBDTransmissionFlags(rawValue: 1 << 1)
    /// `NBD_FLAG_SEND_FLUSH` (bit 2).
    public static let sendFlush = NBDTransmissionFlags(rawValue: 1 << 2)
    /// `NBD_FLAG_SEND_FUA` (bit 3).
    public static let sendFUA = NBDTransmissionFlags(rawValue: 1 << 3)
    /// `NBD_FLAG_ROTATIONAL` (bit 4).
    public static let rotational = NBDTransmissionFlags(rawValue: 1 << 4)
    /// `NBD_FLAG_SEND_TRIM` (bit 5).
    public static let sendTrim = NBDTransmissionFlags(rawValue: 1 << 5)
    /// `NBD_FLAG_SEND_WRITE_ZEROES` (bit 6).
    public static let sendWriteZeroes = NBDTransmissionFlags(rawValue: 1 << 6)
    /// `NBD_FLAG_SEND_DF` (bit 7): needs structured replies; never set here.
    public static let sendDF = NBDTransmissionFlags(rawValue: 1 << 7)
    /// `NBD_FLAG_CAN_MULTI_CONN` (bit 8).
    public static let canMultiConn = NBDTransmissionFlags(rawValue: 1 << 8)
    /// `NBD_FLAG_SEND_CACHE` (bit 10).
    public static let sendCache = NBDTransmissionFlags(rawValue: 1 << 10)
    /// `NBD_FLAG_SEND_FAST_ZERO` (bit 11).
    public static let sendFastZero = NBDTransmissionFlags(rawValue: 1 << 11)
}

/// Command flags: the 16 bits after the request magic.
public struct NBDCommandFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `NBD_CMD_FLAG_FUA` (bit 0).
    public static let fua = NBDCommandFlags(rawValue: 1 << 0)
    /// `NBD_CMD_FLAG_NO_HOLE` (bit 1), WRITE_ZEROES only.
    public static let noHole = NBDCommandFlags(rawValue: 1 << 1)
    /// `NBD_CMD_FLAG_DF` (bit 2), READ with structured replies only.
    public static let dontFragment = NBDCommandFlags(rawValue: 1 << 2)
    /// `NBD_CMD_FLAG_REQ_ONE` (bit 3), BLOCK_STATUS only.
    public static let requestOne = NBDCommandFlags(rawValue: 1 << 3)
    /// `NBD_CMD_FLAG_FAST_ZERO` (bit 4), WRITE_ZEROES only.
    public static let fastZero = NBDCommandFlags(rawValue: 1 << 4)
}

/// An option type (`NBD_OPT_*`), known or not.
public struct NBDOptionCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let exportName = NBDOptionCode(rawValue: 1)
    public static let abort = NBDOptionCode(rawValue: 2)
    public static let list = NBDOptionCode(rawValue: 3)
    public static let startTLS = NBDOptionCode(rawValue: 5)
    public static let info = NBDOptionCode(rawValue: 6)
    public static let go = NBDOptionCode(rawValue: 7)
    public static let structuredReply = NBDOptionCode(rawValue: 8)
    public static let listMetaContext = NBDOptionCode(rawValue: 9)
    public static let setMetaContext = NBDOptionCode(rawValue: 10)
    public static let extendedHeaders = NBDOptionCode(rawValue: 11)

    public var description: String {
        switch self {
        case .exportName: "NBD_OPT_EXPORT_NAME"
        case .abort: "NBD_OPT_ABORT"
        case .list: "NBD_OPT_LIST"
        case .startTLS: "NBD_OPT_STARTTLS"
        case .info: "NBD_OPT_INFO"
        case .go: "NBD_OPT_GO"
        case .structuredReply: "NBD_OPT_STRUCTURED_REPLY"
        case .listMetaContext: "NBD_OPT_LIST_META_CONTEXT"
        case .setMetaContext: "NBD_OPT_SET_META_CONTEXT"
        case .extendedHeaders: "NBD_OPT_EXTENDED_HEADERS"
        default: "option \(rawValue)"
        }
    }
}

/// An option reply type (`NBD_REP_*`); errors have bit 31 set.
public struct NBDReplyType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let ack = NBDReplyType(rawValue: 1)
    public static let server = NBDReplyType(rawValue: 2)
    public static let info = NBDReplyType(rawValue: 3)
    public static let metaContext = NBDReplyType(rawValue: 4)
    public static let errUnsupported = NBDReplyType(rawValue: 1 << 31 | 1)
    public static let errPolicy = NBDReplyType(rawValue: 1 << 31 | 2)
    public static let errInvalid = NBDReplyType(rawValue: 1 << 31 | 3)
    public static let errPlatform = NBDReplyType(rawValue: 1 << 31 | 4)
    public static let errTLSRequired = NBDReplyType(rawValue: 1 << 31 | 5)
    public static let errUnknown = NBDReplyType(rawValue: 1 << 31 | 6)
    public static let errShutdown = NBDReplyType(rawValue: 1 << 31 | 7)
    public static let errBlockSizeRequired = NBDReplyType(rawValue: 1 << 31 | 8)
    public static let errTooBig = NBDReplyType(rawValue: 1 << 31 | 9)

    public var isError: Bool { rawValue & (1 << 31) != 0 }

    public var description: String {
        switch self {
        case .ack: "NBD_REP_ACK"
        case .server: "NBD_REP_SERVER"
        case .info: "NBD_REP_INFO"
        case .metaContext: "NBD_REP_META_CONTEXT"
        case .errUnsupported: "NBD_REP_ERR_UNSUP"
        case .errPolicy: "NBD_REP_ERR_POLICY"
        case .errInvalid: "NBD_REP_ERR_INVALID"
        case .errPlatform: "NBD_REP_ERR_PLATFORM"
        case .errTLSRequired: "NBD_REP_ERR_TLS_REQD"
        case .errUnknown: "NBD_REP_ERR_UNKNOWN"
        case .errShutdown: "NBD_REP_ERR_SHUTDOWN"
        case .errBlockSizeRequired: "NBD_REP_ERR_BLOCK_SIZE_REQD"
        case .errTooBig: "NBD_REP_ERR_TOO_BIG"
        default: "reply type 0x\(hex(rawValue))"
        }
    }
}

/// An information type (`NBD_INFO_*`) of `NBD_OPT_INFO` / `NBD_OPT_GO`.
public struct NBDInfoType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let export = NBDInfoType(rawValue: 0)
    public static let name = NBDInfoType(rawValue: 1)
    public static let description = NBDInfoType(rawValue: 2)
    public static let blockSize = NBDInfoType(rawValue: 3)

    public var description: String {
        switch self {
        case .export: "NBD_INFO_EXPORT"
        case .name: "NBD_INFO_NAME"
        case .description: "NBD_INFO_DESCRIPTION"
        case .blockSize: "NBD_INFO_BLOCK_SIZE"
        default: "info \(rawValue)"
        }
    }
}

/// A request type (`NBD_CMD_*`), known or not.
public struct NBDCommandType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let read = NBDCommandType(rawValue: 0)
    public static let write = NBDCommandType(rawValue: 1)
    public static let disconnect = NBDCommandType(rawValue: 2)
    public static let flush = NBDCommandType(rawValue: 3)
    public static let trim = NBDCommandType(rawValue: 4)
    public static let cache = NBDCommandType(rawValue: 5)
    public static let writeZeroes = NBDCommandType(rawValue: 6)
    public static let blockStatus = NBDCommandType(rawValue: 7)
    public static let resize = NBDCommandType(rawValue: 8)

    public var description: String {
        switch self {
        case .read: "NBD_CMD_READ"
        case .write: "NBD_CMD_WRITE"
        case .disconnect: "NBD_CMD_DISC"
        case .flush: "NBD_CMD_FLUSH"
        case .trim: "NBD_CMD_TRIM"
        case .cache: "NBD_CMD_CACHE"
        case .writeZeroes: "NBD_CMD_WRITE_ZEROES"
        case .blockStatus: "NBD_CMD_BLOCK_STATUS"
        case .resize: "NBD_CMD_RESIZE"
        default: "command \(rawValue)"
        }
    }
}

/// The error field of a reply (proto.md "Error values"). The spec restricts
/// it to the values below; a client treats any other as `invalid`.
public struct NBDErrno: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `NBD_EPERM` (1): a write or trim on a read-only export.
    public static let notPermitted = NBDErrno(rawValue: 1)
    /// `NBD_EIO` (5): the backing store failed.
    public static let io = NBDErrno(rawValue: 5)
    /// `NBD_ENOMEM` (12): the spec asks servers to avoid it.
    public static let noMemory = NBDErrno(rawValue: 12)
    /// `NBD_EINVAL` (22): a malformed, misaligned, out-of-range or unknown request.
    public static let invalid = NBDErrno(rawValue: 22)
    /// `NBD_ENOSPC` (28): a write past the end, or the store is full.
    public static let noSpace = NBDErrno(rawValue: 28)
    /// `NBD_EOVERFLOW` (75).
    public static let overflow = NBDErrno(rawValue: 75)
    /// `NBD_ENOTSUP` (95).
    public static let notSupported = NBDErrno(rawValue: 95)
    /// `NBD_ESHUTDOWN` (108): the server is shutting down; the client must disconnect.
    public static let shutdown = NBDErrno(rawValue: 108)

    public var description: String {
        switch self {
        case .notPermitted: "NBD_EPERM"
        case .io: "NBD_EIO"
        case .noMemory: "NBD_ENOMEM"
        case .invalid: "NBD_EINVAL"
        case .noSpace: "NBD_ENOSPC"
        case .overflow: "NBD_EOVERFLOW"
        case .notSupported: "NBD_ENOTSUP"
        case .shutdown: "NBD_ESHUTDOWN"
        default: "error \(rawValue)"
        }
    }
}

/// Lower-case hexadecimal digits of `value`, no prefix.
func hex(_ value: some BinaryInteger) -> String {
    String(value, radix: 16)
}
