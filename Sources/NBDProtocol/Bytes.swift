// Big-endian field reading and writing over plain byte collections.

/// Reads big-endian fields front to back from any random-access byte
/// collection (an array, a slice, a SwiftNIO `ByteBufferView`). Every read
/// returns nil rather than trapping when too few bytes remain.
struct ByteReader<Bytes: RandomAccessCollection<UInt8>> {
    let bytes: Bytes
    private(set) var index: Bytes.Index

    init(_ bytes: Bytes) {
        self.bytes = bytes
        self.index = bytes.startIndex
    }

    /// Bytes consumed so far.
    var consumed: Int { bytes.distance(from: bytes.startIndex, to: index) }
    /// Bytes not yet consumed.
    var remaining: Int { bytes.distance(from: index, to: bytes.endIndex) }

    mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type = T.self) -> T? {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { return nil }
        var value: T = 0
        for _ in 0..<size {
            value = value << 8 | T(bytes[index])
            index = bytes.index(after: index)
        }
        return value
    }

    mutating func u16() -> UInt16? { integer() }
    mutating func u32() -> UInt32? { integer() }
    mutating func u64() -> UInt64? { integer() }

    /// The next `count` bytes as an array.
    mutating func take(_ count: Int) -> [UInt8]? {
        guard count >= 0, remaining >= count else { return nil }
        let end = bytes.index(index, offsetBy: count)
        defer { index = end }
        return Array(bytes[index..<end])
    }

    mutating func skip(_ count: Int) -> Bool {
        guard count >= 0, remaining >= count else { return false }
        index = bytes.index(index, offsetBy: count)
        return true
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        let size = MemoryLayout<T>.size
        for shift in stride(from: (size - 1) * 8, through: 0, by: -8) {
            append(UInt8(truncatingIfNeeded: value >> shift))
        }
    }
}

/// Reads one big-endian integer at byte `offset` of `bytes`, or nil when
/// fewer bytes are there.
func bigEndian<T: FixedWidthInteger & UnsignedInteger>(
    _: T.Type, in bytes: some RandomAccessCollection<UInt8>, at offset: Int
) -> T? {
    var reader = ByteReader(bytes)
    guard reader.skip(offset) else { return nil }
    return reader.integer(T.self)
}

/// A protocol string: valid UTF-8, no NUL, at most `NBD.maximumStringLength`
/// bytes (proto.md "Conventions"); otherwise the reason it is not one.
func decodeString(_ bytes: [UInt8]) -> Result<String, StringProblem> {
    if bytes.count > NBD.maximumStringLength { return .failure(.tooLong(bytes.count)) }
    if bytes.contains(0) { return .failure(.containsNUL) }
    guard let text = String(validating: bytes, as: UTF8.self) else { return .failure(.notUTF8) }
    return .success(text)
}

enum StringProblem: Error, Equatable, CustomStringConvertible {
    case tooLong(Int)
    case containsNUL
    case notUTF8

    var description: String {
        switch self {
        case .tooLong(let count): "\(count) bytes, more than \(NBD.maximumStringLength)"
        case .containsNUL: "contains a NUL byte"
        case .notUTF8: "is not valid UTF-8"
        }
    }
}

/// A string cut to the protocol's limit on a UTF-8 boundary, for messages
/// the server sends.
func limitedUTF8(_ text: String) -> [UInt8] {
    var bytes = Array(text.utf8)
    guard bytes.count > NBD.maximumStringLength else { return bytes }
    var cut = NBD.maximumStringLength
    // Back up over continuation bytes (10xxxxxx) so no character is split.
    while cut > 0, bytes[cut] & 0xC0 == 0x80 { cut -= 1 }
    bytes.removeSubrange(cut...)
    return bytes
}

/// A name quoted for a log or error message: non-printable bytes escaped,
/// at most 64 characters.
func printable(_ text: String) -> String {
    var out = ""
    for scalar in text.unicodeScalars.prefix(64) {
        if scalar.value < 0x20 || scalar.value == 0x7f {
            out += "\\u{\(hex(scalar.value))}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return text.unicodeScalars.count > 64 ? out + "…" : out
}
