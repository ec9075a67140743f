// Big-endian field access over byte arrays. qcow2 is big-endian throughout;
// every structure is decoded field by field, never loaded as a struct.

@inline(__always)
func readBE32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
    var value: UInt32 = 0
    for i in 0..<4 { value = value << 8 | UInt32(bytes[offset + i]) }
    return value
}

@inline(__always)
func readBE64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
    var value: UInt64 = 0
    for i in 0..<8 { value = value << 8 | UInt64(bytes[offset + i]) }
    return value
}

@inline(__always)
func readBE16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
    UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
}

@inline(__always)
func putBE32(_ bytes: inout [UInt8], _ offset: Int, _ value: UInt32) {
    for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32(i))) }
}

@inline(__always)
func putBE64(_ bytes: inout [UInt8], _ offset: Int, _ value: UInt64) {
    for i in 0..<8 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (56 - 8 * UInt64(i))) }
}

func be64Bytes(_ value: UInt64) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 8)
    putBE64(&out, 0, value)
    return out
}

/// Decodes a table of big-endian 64-bit entries (L1, L2, refcount table).
func decodeBE64Table(_ bytes: [UInt8], count: Int) -> [UInt64] {
    var out = [UInt64](repeating: 0, count: count)
    bytes.withUnsafeBytes { raw in
        for i in 0..<min(count, bytes.count / 8) {
            out[i] = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))
        }
    }
    return out
}

/// Encodes a table of 64-bit entries big-endian.
func encodeBE64Table(_ entries: [UInt64]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: entries.count * 8)
    out.withUnsafeMutableBytes { raw in
        for (i, entry) in entries.enumerated() {
            raw.storeBytes(of: entry.bigEndian, toByteOffset: i * 8, as: UInt64.self)
        }
    }
    return out
}

/// Do [a, a+alen) and [b, b+blen) share a byte? Exact for any inputs: it
/// compares distances, never computes an end that could wrap.
func rangesOverlap(_ a: UInt64, _ alen: UInt64, _ b: UInt64, _ blen: UInt64) -> Bool {
    guard alen > 0, blen > 0 else { return false }
    return a <= b ? b - a < alen : a - b < blen
}

// Overflow-checked arithmetic for values read from the file. Every sum,
// product and shift on a header field or table entry goes through one of
// these (or is bounded by a check made just before, said so in a comment),
// so a hostile value becomes a `QCOW2Error`, never a trap or a silent wrap.

/// `a + b`, or nil when the sum does not fit in 64 bits.
@inline(__always)
func checkedSum(_ a: UInt64, _ b: UInt64) -> UInt64? {
    let (value, overflow) = a.addingReportingOverflow(b)
    return overflow ? nil : value
}

/// `a * b`, or nil when the product does not fit in 64 bits.
@inline(__always)
func checkedProduct(_ a: UInt64, _ b: UInt64) -> UInt64? {
    let (value, overflow) = a.multipliedReportingOverflow(by: b)
    return overflow ? nil : value
}

/// `value << bits`, or nil when a set bit would be shifted out (Swift's `<<`
/// drops them silently).
@inline(__always)
func checkedShift(_ value: UInt64, _ bits: UInt64) -> UInt64? {
    guard bits < 64 else { return value == 0 ? 0 : nil }
    return value <= UInt64.max >> bits ? value << bits : nil
}

/// The file offset of entry `index` of a table of 8-byte entries at
/// `table`, for error messages: saturates at 2^64-1 rather than trap.
@inline(__always)
func entryAddress(_ table: UInt64, _ index: UInt64) -> UInt64 {
    checkedProduct(index, 8).flatMap { checkedSum(table, $0) } ?? UInt64.max
}
