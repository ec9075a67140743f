#if canImport(Glibc)
import Glibc
#endif

/// The body of the libFuzzer target (scripts/fuzz) and of the regression
/// tests that replay its findings: parse a header from arbitrary bytes, then
/// open the same bytes as an image and walk, read and write its tables.
/// Any thrown `QCOW2Error` is an accepted outcome; a trap is a finding.
public enum QCOW2Fuzz {
    /// Runs one input. `scratchPath` is a file the function may overwrite.
    public static func exercise(_ bytes: [UInt8], scratchPath: String) {
        exerciseCodecs(bytes)
        exerciseImage(bytes, scratchPath: scratchPath)
    }

    /// The pure parts: header parsing, the refcount codecs (round trip over
    /// the first 4 KiB: more bytes reach no other code), entry decoding.
    public static func exerciseCodecs(_ bytes: [UInt8]) {
        _ = try? QCOW2Header.parse(bytes, fileSize: UInt64(bytes.count))
        let head = Array(bytes.prefix(4096))
        for order in 0...6 where !head.isEmpty {
            let decoded = QCOW2Entries.decodeRefcounts(head, order: UInt32(order))
            let whole = decoded.count * (1 << order) / 8
            if QCOW2Entries.encodeRefcounts(decoded, order: UInt32(order)) != Array(head.prefix(whole)) { trap("refcount round trip") }
        }
        if bytes.count >= 8 {
            let entry = readBE64(bytes, 0)
            _ = try? QCOW2Entries.decodeL2(entry, version: 3, clusterSize: 512, index: 0, tableOffset: 0)
            _ = try? QCOW2Entries.l2TableOffset(l1Entry: entry, index: 0, tableOffset: 0, clusterSize: 512)
        }
    }

    /// The tables, through the engine, on a file holding the bytes: open
    /// (writable, else read-only), enumerate, read, write, discard, zero,
    /// flush.
    public static func exerciseImage(_ bytes: [UInt8], scratchPath: String) {
        let fd = open(scratchPath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        close(fd)
        guard let image = try? QCOW2Image.open(path: scratchPath, writable: true, backing: .none) else {
            _ = try? QCOW2Image.open(path: scratchPath, writable: false, backing: .none)
            return
        }
        var g: UInt64 = 0
        for _ in 0..<64 {
            guard let next = try? image.nextAllocatedCluster(atOrAfter: g) else { break }
            _ = try? image.read(at: next * image.clusterSize, count: 512)
            g = next + 1
        }
        _ = try? image.read(at: 0, count: 4096)
        _ = try? image.write([1, 2, 3], at: 1000)
        _ = try? image.discard(at: 0, count: image.clusterSize * 2)
        _ = try? image.writeZeroes(at: 0, count: min(image.virtualSize, image.clusterSize * 3))
        _ = try? image.flush()
    }

    static func trap(_ message: StaticString) -> Never { fatalError("\(message)") }
}

// Structure-aware mutation: the libFuzzer target's custom mutator (and the
// tests that sweep the same table) set one header field, extension length
// or first table entry to a boundary value, so that sums, products and
// shifts on it meet their edges, which byte flips rarely reach.
extension QCOW2Fuzz {
    /// A big-endian field of the first cluster.
    public struct Field: Sendable, Equatable {
        public let name: String
        public let offset: Int
        public let width: Int
    }

    /// The fixed header fields (qcow2.rst, "Header"; v3 fields from byte 72).
    public static let headerFields: [Field] = [
        Field(name: "version", offset: QCOW2Header.Field.version, width: 4),
        Field(name: "backing_file_offset", offset: QCOW2Header.Field.backingFileOffset, width: 8),
        Field(name: "backing_file_size", offset: QCOW2Header.Field.backingFileSize, width: 4),
        Field(name: "cluster_bits", offset: QCOW2Header.Field.clusterBits, width: 4),
        Field(name: "size", offset: QCOW2Header.Field.size, width: 8),
        Field(name: "crypt_method", offset: QCOW2Header.Field.cryptMethod, width: 4),
        Field(name: "l1_size", offset: QCOW2Header.Field.l1Size, width: 4),
        Field(name: "l1_table_offset", offset: QCOW2Header.Field.l1TableOffset, width: 8),
        Field(name: "refcount_table_offset", offset: QCOW2Header.Field.refcountTableOffset, width: 8),
        Field(name: "refcount_table_clusters", offset: QCOW2Header.Field.refcountTableClusters, width: 4),
        Field(name: "nb_snapshots", offset: QCOW2Header.Field.nbSnapshots, width: 4),
        Field(name: "snapshots_offset", offset: QCOW2Header.Field.snapshotsOffset, width: 8),
        Field(name: "incompatible_features", offset: QCOW2Header.Field.incompatibleFeatures, width: 8),
        Field(name: "compatible_features", offset: QCOW2Header.Field.compatibleFeatures, width: 8),
        Field(name: "autoclear_features", offset: QCOW2Header.Field.autoclearFeatures, width: 8),
        Field(name: "refcount_order", offset: QCOW2Header.Field.refcountOrder, width: 4),
        Field(name: "header_length", offset: QCOW2Header.Field.headerLength, width: 4),
    ]

    /// The fields of one image worth setting: the header fields, the length
    /// of every header extension, and the first entries of the L1 table and
    /// the refcount table (where the header points inside `bytes`).
    public static func fields(of bytes: [UInt8]) -> [Field] {
        var out = headerFields.filter { $0.offset + $0.width <= bytes.count }
        guard bytes.count >= Int(QCOW2Header.Limits.v3MinHeaderLength) else { return out }
        let version = readBE32(bytes, QCOW2Header.Field.version)
        var position = version == 3 ? Int(readBE32(bytes, QCOW2Header.Field.headerLength)) : Int(QCOW2Header.Limits.v2HeaderLength)
        // At most 16 extensions; the walk stops at the end marker or at
        // anything that does not fit.
        for _ in 0..<16 {
            guard position >= 0, position <= bytes.count - 8 else { break }
            let type = readBE32(bytes, position)
            if type == QCOW2Header.ExtensionType.end { break }
            out.append(Field(name: "extension \(hex(UInt64(type))) length", offset: position + 4, width: 4))
            let length = Int(readBE32(bytes, position + 4))
            guard length <= bytes.count else { break }
            position += 8 + (length + 7) & ~7
        }
        for (name, pointer) in [("L1 entry 0", QCOW2Header.Field.l1TableOffset), ("refcount table entry 0", QCOW2Header.Field.refcountTableOffset)] {
            let table = readBE64(bytes, pointer)
            if table > 0, table <= UInt64(bytes.count - 8) { out.append(Field(name: name, offset: Int(table), width: 8)) }
        }
        return out
    }

    /// Boundary values for a field `width` bytes wide in an image of
    /// `fileSize` bytes with `clusterSize`-byte clusters, truncated to the
    /// width and without repeats. Wrapping arithmetic is intended here: the
    /// values are meant to sit at the edges.
    public static func boundaryValues(width: Int, fileSize: UInt64, clusterSize: UInt64) -> [UInt64] {
        let raw: [UInt64] = [
            0, 1, 2, 3, 4, 6, 7, 8, 9, 21, 22, 63, 64, 72, 104, 112, 511, 512, 1023, 1024,
            (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 56) - 512, 1 << 56,
            (1 << 63) - 1, 1 << 63, UInt64.max - 511, UInt64.max - 1, UInt64.max,
            fileSize &- 1, fileSize, fileSize &+ 1, fileSize &- clusterSize, fileSize &+ clusterSize,
            clusterSize &- 8, clusterSize &- 1, clusterSize, clusterSize &+ 1, 2 &* clusterSize,
            QCOW2Entries.copied | clusterSize, QCOW2Entries.copied | (fileSize & ~(clusterSize &- 1)),
        ]
        let mask: UInt64 = width >= 8 ? UInt64.max : (1 << UInt64(8 * width)) - 1
        var seen = Set<UInt64>()
        return raw.map { $0 & mask }.filter { seen.insert($0).inserted }
    }

    /// Stores `value` big-endian in `field` (which must fit in `bytes`).
    public static func set(_ field: Field, to value: UInt64, in bytes: inout [UInt8]) {
        for i in 0..<field.width {
            bytes[field.offset + i] = UInt8(truncatingIfNeeded: value >> UInt64(8 * (field.width - 1 - i)))
        }
    }

    /// One structure-aware mutation chosen by `choice` (any number: the
    /// fuzzer's random bits): sets one field of `fields(of:)` to one of its
    /// boundary values. Half the time the value is one of the extremes
    /// (0, 1, all ones, all ones - 1, the top bit, the file size ± 1), where
    /// sums and shifts overflow, rather than any of the boundary values.
    /// Nil (bytes unchanged) when the input has no header.
    @discardableResult
    public static func mutateField(_ bytes: inout [UInt8], choice: UInt64) -> (Field, UInt64)? {
        let candidates = fields(of: bytes)
        guard !candidates.isEmpty else { return nil }
        var rest = choice
        func pick(_ count: Int) -> Int {
            defer { rest /= UInt64(count) }
            return Int(rest % UInt64(count))
        }
        let field = candidates[pick(candidates.count)]
        let value: UInt64
        let fileSize = UInt64(bytes.count)
        if pick(2) == 0 {
            let mask: UInt64 = field.width >= 8 ? UInt64.max : (1 << UInt64(8 * field.width)) - 1
            let extremes = [0, 1, mask, mask - 1, mask / 2 + 1, fileSize &- 1, (fileSize &+ 1) & mask]
            value = extremes[pick(extremes.count)]
        } else {
            let bits = bytes.count >= 24 ? readBE32(bytes, QCOW2Header.Field.clusterBits) : 16
            let clusterSize = UInt64(1) << UInt64(min(bits, 63))
            let values = boundaryValues(width: field.width, fileSize: fileSize, clusterSize: clusterSize)
            value = values[pick(values.count)]
        }
        set(field, to: value, in: &bytes)
        return (field, value)
    }
}
