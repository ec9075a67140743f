// The NBD wire protocol (NetworkBlockDevice/nbd doc/proto.md), fixed newstyle
// negotiation and simple replies only. Everything here is a pure value: no
// I/O, no threads, no dependencies (not even Foundation), so the module also
// builds alone for the libFuzzer target (scripts/fuzz-nbd).
//
// All integers on the wire are big-endian.

/// Namespace for the protocol's magic numbers and limits.
public enum NBD {
    /// "NBDMAGIC": the first 8 bytes the server sends (proto.md "Newstyle negotiation").
    public static let initMagic: UInt64 = 0x4e42_444d_4147_4943
    /// "IHAVEOPT": follows `initMagic` in the greeting and starts every option request.
    public static let optionMagic: UInt64 = 0x4948_4156_454f_5054
    /// Starts every option reply (proto.md "Fixed newstyle negotiation").
    public static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    /// Starts every transmission request (`NBD_REQUEST_MAGIC`).
    public static let requestMagic: UInt32 = 0x2560_9513
    /// Starts every simple reply (`NBD_SIMPLE_REPLY_MAGIC`).
    public static let simpleReplyMagic: UInt32 = 0x6744_6698
    /// Starts a structured reply chunk; never sent by this implementation.
    public static let structuredReplyMagic: UInt32 = 0x668e_33ef

    /// Longest string (export name, description, error message) the spec
    /// allows (proto.md "Conventions": MUST be no longer than 4096 bytes).
    public static let maximumStringLength = 4096

    /// Size of the server greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags.
    public static let greetingSize = 18
    /// Size of the client flags field that answers the greeting.
    public static let clientFlagsSize = 4
    /// Size of an option request header: IHAVEOPT, option, data length.
    public static let optionHeaderSize = 16
    /// Size of an option reply header: magic, option, reply type, data length.
    public static let optionReplyHeaderSize = 20
    /// Zero bytes that end the `NBD_OPT_EXPORT_NAME` reply unless the client set
    /// `NBD_FLAG_C_NO_ZEROES`.
    public static let exportNameReplyPadding = 124
}

/// The three size constraints of proto.md "Size constraints", advertised with
/// `NBD_INFO_BLOCK_SIZE` and enforced on every request.
public struct NBDBlockSizes: Sendable, Hashable, CustomStringConvertible {
    /// Smallest addressable length and alignment (a power of 2, at most 64 KiB).
    public let minimum: UInt32
    /// Size at which aligned I/O is efficient (a power of 2, at least
    /// max(minimum, 512)).
    public let preferred: UInt32
    /// Largest READ or WRITE payload accepted (at least `preferred`).
    public let maximum: UInt32

    /// The spec's defaults: minimum 1, preferred 4 KiB, maximum payload 32 MiB
    /// (2^25, the largest payload a client may assume without asking).
    public static let standard = NBDBlockSizes(checked: 1, 4096, 1 << 25)

    /// Nil unless the three values satisfy proto.md "Size constraints".
    public init?(minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        guard minimum >= 1, minimum <= 65536, minimum & (minimum - 1) == 0,
            preferred >= max(minimum, 512), preferred & (preferred - 1) == 0,
            maximum >= preferred
        else { return nil }
        self.init(checked: minimum, preferred, maximum)
    }

    private init(checked minimum: UInt32, _ preferred: UInt32, _ maximum: UInt32) {
        self.minimum = minimum
        self.preferred = preferred
        self.maximum = maximum
    }

    public var description: String { "min \(minimum), preferred \(preferred), max \(maximum)" }
}
