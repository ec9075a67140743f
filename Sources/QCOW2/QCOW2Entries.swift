/// L1 and L2 entries and refcount blocks (qcow2.rst, "Cluster mapping" and
/// "Host cluster management"): pure functions over raw entries and bytes.
public enum QCOW2Entries {
    /// Bits 9-55 of an L1 or standard L2 entry.
    public static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    /// Bit 63: the refcount of the cluster is exactly one.
    public static let copied: UInt64 = 1 << 63
    /// Bit 62 of an L2 entry: compressed cluster.
    public static let compressed: UInt64 = 1 << 62
    /// Bit 0 of a v3 standard L2 entry: reads as zeros.
    public static let zero: UInt64 = 1
    /// Bits that must be zero in an L1 entry (1-8, 56-62).
    public static let l1Reserved: UInt64 = 0x7f00_0000_0000_01fe
    /// Bits that must be zero in a standard L2 entry (1-8, 56-61).
    public static let l2Reserved: UInt64 = 0x3f00_0000_0000_01fe
    /// Bits that must be zero in a refcount-table entry (0-8, 56-63).
    public static let refcountTableReserved: UInt64 = 0xff00_0000_0000_01ff

    /// What an L2 entry says about one guest cluster.
    public enum L2Entry: Sendable, Equatable {
        /// Not allocated in this layer: read from the backing file.
        case unallocated
        /// Reads as zeros; `host` is a preallocated cluster, if any.
        case zero(host: UInt64?)
        /// Data at `host`.
        case data(host: UInt64)
        /// Compressed data (not supported by this engine).
        case compressed(raw: UInt64)
    }

    /// Decodes an L1 entry to an L2 table offset (0: none).
    public static func l2TableOffset(l1Entry entry: UInt64, index: UInt64, tableOffset: UInt64, clusterSize: UInt64) throws(QCOW2Error) -> UInt64 {
        let offset = entry & offsetMask
        if entry & l1Reserved != 0 {
            throw .invalidTableEntry(table: "L1", index: index, entry: entry, offset: entryAddress(tableOffset, index), reason: "reserved bits set")
        }
        if offset % max(clusterSize, 1) != 0 {
            throw .invalidTableEntry(table: "L1", index: index, entry: entry, offset: entryAddress(tableOffset, index), reason: "L2 table offset not cluster-aligned")
        }
        return offset
    }

    /// Decodes an L2 entry. `tableOffset` and `index` only name the entry in
    /// errors.
    public static func decodeL2(_ entry: UInt64, version: UInt32, clusterSize: UInt64, index: UInt64, tableOffset: UInt64) throws(QCOW2Error) -> L2Entry {
        if entry & compressed != 0 { return .compressed(raw: entry) }
        if entry & l2Reserved != 0 {
            throw .invalidTableEntry(table: "L2", index: index, entry: entry, offset: entryAddress(tableOffset, index), reason: "reserved bits set")
        }
        let host = entry & offsetMask
        if host % max(clusterSize, 1) != 0 {
            throw .invalidTableEntry(table: "L2", index: index, entry: entry, offset: entryAddress(tableOffset, index), reason: "data offset not cluster-aligned")
        }
        if entry & zero != 0 {
            guard version >= 3 else {
                throw .invalidTableEntry(table: "L2", index: index, entry: entry, offset: entryAddress(tableOffset, index), reason: "zero flag in a version 2 image")
            }
            return .zero(host: host == 0 ? nil : host)
        }
        return host == 0 ? .unallocated : .data(host: host)
    }

    /// Decodes a refcount table entry to a refcount block offset (0: none).
    public static func refcountBlockOffset(_ entry: UInt64, index: UInt64, tableOffset: UInt64) throws(QCOW2Error) -> UInt64 {
        if entry & refcountTableReserved != 0 {
            throw .invalidTableEntry(table: "refcount table", index: index, entry: entry, offset: entryAddress(tableOffset, index), reason: "reserved bits set or offset not aligned to 512")
        }
        return entry
    }

    /// Decodes a refcount block of `refcountOrder` (entry width 2^order bits).
    /// Entries narrower than a byte are packed from the least significant
    /// bit; entries of 8 bits and more are big-endian.
    /// An order above 6 (which `QCOW2Header.parse` refuses) decodes to no
    /// entries.
    public static func decodeRefcounts(_ block: [UInt8], order: UInt32) -> [UInt64] {
        guard order <= 6 else { return [] }
        let bits = 1 << Int(order)
        let count = block.count * 8 / bits
        var out = [UInt64](repeating: 0, count: count)
        if bits < 8 {
            let perByte = 8 / bits
            let mask = UInt8((1 << bits) - 1)
            for i in 0..<count {
                out[i] = UInt64((block[i / perByte] >> UInt8((i % perByte) * bits)) & mask)
            }
        } else {
            let width = bits / 8
            for i in 0..<count {
                var value: UInt64 = 0
                for b in 0..<width { value = value << 8 | UInt64(block[i * width + b]) }
                out[i] = value
            }
        }
        return out
    }

    /// Encodes refcounts (each already within the width's maximum).
    public static func encodeRefcounts(_ entries: [UInt64], order: UInt32) -> [UInt8] {
        guard order <= 6 else { return [] }
        let bits = 1 << Int(order)
        var out = [UInt8](repeating: 0, count: (entries.count * bits + 7) / 8)
        if bits < 8 {
            let perByte = 8 / bits
            let mask = UInt64((1 << bits) - 1)
            for (i, value) in entries.enumerated() {
                out[i / perByte] |= UInt8((value & mask) << UInt64((i % perByte) * bits))
            }
        } else {
            let width = bits / 8
            for (i, value) in entries.enumerated() {
                for b in 0..<width {
                    out[i * width + b] = UInt8(truncatingIfNeeded: value >> UInt64(8 * (width - 1 - b)))
                }
            }
        }
        return out
    }
}
