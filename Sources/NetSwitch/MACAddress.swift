/// An Ethernet address, the 48 bits kept in the low bits of a `UInt64`.
public struct MACAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let value: UInt64

    public init(_ value: UInt64) { self.value = value & 0xFFFF_FFFF_FFFF }

    /// The six bytes at `offset` of `bytes` (the caller checks the length).
    init(bytes: [UInt8], at offset: Int) {
        var v: UInt64 = 0
        for i in 0..<6 { v = v << 8 | UInt64(bytes[offset + i]) }
        self.init(v)
    }

    /// `aa:bb:cc:dd:ee:ff` (either case); nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var v: UInt64 = 0
        for part in parts {
            guard part.count == 2, let byte = UInt8(part, radix: 16) else { return nil }
            v = v << 8 | UInt64(byte)
        }
        self.init(v)
    }

    public static let broadcast = MACAddress(0xFFFF_FFFF_FFFF)

    /// The group bit (the least significant bit of the first byte): broadcast and multicast.
    public var isGroup: Bool { value >> 40 & 1 == 1 }

    public var description: String {
        (0..<6).map { i in
            let byte = UInt8(truncatingIfNeeded: value >> (40 - 8 * UInt64(i)))
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
    }

    public static func < (lhs: MACAddress, rhs: MACAddress) -> Bool { lhs.value < rhs.value }
}
