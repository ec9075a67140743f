/// The qcow2 header, decoded field by field and validated (QEMU
/// docs/interop/qcow2.rst, "Header" and "Header extensions").
///
/// `parse` is a pure function over the bytes of the first cluster; it bounds
/// every size before anything is allocated from it and names the field and
/// its offset in every error.
public struct QCOW2Header: Sendable, Equatable {
    // Byte offsets of the fields (qcow2.rst, "Header").
    enum Field {
        static let magic = 0, version = 4, backingFileOffset = 8, backingFileSize = 16
        static let clusterBits = 20, size = 24, cryptMethod = 32, l1Size = 36, l1TableOffset = 40
        static let refcountTableOffset = 48, refcountTableClusters = 56, nbSnapshots = 60
        static let snapshotsOffset = 64, incompatibleFeatures = 72, compatibleFeatures = 80
        static let autoclearFeatures = 88, refcountOrder = 96, headerLength = 100, compressionType = 104
    }

    /// Named limits. QEMU uses the same values (block/qcow2.h).
    public enum Limits {
        public static let magic: UInt32 = 0x5146_49fb
        public static let minClusterBits: UInt32 = 9
        public static let maxClusterBits: UInt32 = 21
        /// QCOW_MAX_L1_SIZE: 32 MiB of L1 entries.
        public static let maxL1Bytes: UInt64 = 32 << 20
        /// QCOW_MAX_REFTABLE_SIZE: 8 MiB of refcount-table entries.
        public static let maxRefcountTableBytes: UInt64 = 8 << 20
        /// The spec: "must not be longer than 1023 bytes".
        public static let maxBackingFileName: UInt32 = 1023
        /// QCOW_MAX_SNAPSHOTS.
        public static let maxSnapshots: UInt32 = 65536
        /// Backing format names longer than this are refused (QEMU: 16).
        public static let maxBackingFormatName: UInt32 = 16
        /// Host offsets are bits 9-55 of an L1/L2 entry.
        public static let maxHostOffset: UInt64 = 1 << 56
        /// v2 header length; the v3 fixed part is 104 bytes.
        public static let v2HeaderLength: UInt32 = 72
        public static let v3MinHeaderLength: UInt32 = 104
    }

    public enum IncompatibleFeature {
        public static let dirty: UInt64 = 1 << 0
        public static let corrupt: UInt64 = 1 << 1
        public static let externalDataFile: UInt64 = 1 << 2
        public static let compressionType: UInt64 = 1 << 3
        public static let extendedL2: UInt64 = 1 << 4
        /// The allow-list: the only incompatible bits an image may carry to be
        /// opened. Dirty and corrupt images open read-only.
        public static let supported: UInt64 = dirty | corrupt
    }

    /// Autoclear bits this engine keeps consistent when it writes: none (it
    /// maintains neither bitmaps nor a raw external data file), so all are
    /// cleared before the first write.
    public static let supportedAutoclear: UInt64 = 0

    public enum ExtensionType {
        public static let end: UInt32 = 0
        public static let backingFormat: UInt32 = 0xe279_2aca
        public static let featureNameTable: UInt32 = 0x6803_f857
        public static let bitmaps: UInt32 = 0x2385_2875
        public static let fullDiskEncryption: UInt32 = 0x0537_be77
        public static let externalDataFile: UInt32 = 0x4441_5441
    }

    public struct Extension: Sendable, Equatable {
        public var type: UInt32
        public var offset: UInt64
        public var data: [UInt8]
    }

    public var version: UInt32
    public var backingFileOffset: UInt64
    public var backingFileSize: UInt32
    public var clusterBits: UInt32
    public var size: UInt64
    public var cryptMethod: UInt32
    public var l1Size: UInt32
    public var l1TableOffset: UInt64
    public var refcountTableOffset: UInt64
    public var refcountTableClusters: UInt32
    public var nbSnapshots: UInt32
    public var snapshotsOffset: UInt64
    public var incompatibleFeatures: UInt64
    public var compatibleFeatures: UInt64
    public var autoclearFeatures: UInt64
    public var refcountOrder: UInt32
    public var headerLength: UInt32
    public var compressionType: UInt8
    public var extensions: [Extension]
    public var backingFile: String?
    public var backingFormat: String?

    // Derived sizes. `parse` bounds cluster_bits to 9...21 and refcount_order
    // to 0...6; the clamps below only keep a header edited in memory from
    // trapping (a zero divisor, a negative width).
    public var clusterSize: UInt64 { 1 << UInt64(min(clusterBits, 63)) }
    public var l2Entries: UInt64 { max(clusterSize / 8, 1) }
    public var l2Bits: UInt32 { clusterBits > 3 ? clusterBits - 3 : 0 }
    public var refcountBits: UInt64 { 1 << UInt64(min(refcountOrder, 6)) }
    public var refcountBlockEntries: UInt64 { max((clusterSize / refcountBits) * 8, 1) }
    public var refcountMax: UInt64 { refcountBits >= 64 ? UInt64.max : (1 << refcountBits) - 1 }
    /// How many L1 entries a disk of `size` bytes needs (any input: no sum
    /// that could overflow, a shift of 64 or more bits means one entry).
    public static func l1Entries(size: UInt64, clusterBits: UInt32) -> UInt64 {
        let bits = max(2 * UInt64(clusterBits), 3) - 3
        guard bits < 64 else { return size == 0 ? 0 : 1 }
        let perL1 = UInt64(1) << bits
        return size / perL1 + (size % perL1 == 0 ? 0 : 1)
    }

    /// How many bytes of the first cluster `parse` needs to see at least:
    /// the fixed header; the caller then reads the whole first cluster.
    public static let minimumPrefix = 112

    /// Parses and validates a header from the bytes at the start of the file
    /// (ideally the whole first cluster). `fileSize` bounds the tables.
    public static func parse(_ bytes: [UInt8], fileSize: UInt64) throws(QCOW2Error) -> QCOW2Header {
        func need(_ count: Int, _ what: String) throws(QCOW2Error) {
            if bytes.count < count {
                throw .truncated(what: what, offset: 0, length: UInt64(count), fileSize: fileSize)
            }
        }
        try need(Int(Limits.v2HeaderLength), "qcow2 header")
        let magic = readBE32(bytes, Field.magic)
        guard magic == Limits.magic else { throw .badMagic(found: magic) }
        let version = readBE32(bytes, Field.version)
        guard version == 2 || version == 3 else {
            throw .invalidField(field: "version", value: UInt64(version), offset: UInt64(Field.version), reason: "only versions 2 and 3 exist")
        }
        let clusterBits = readBE32(bytes, Field.clusterBits)
        guard (Limits.minClusterBits...Limits.maxClusterBits).contains(clusterBits) else {
            throw .invalidField(field: "cluster_bits", value: UInt64(clusterBits), offset: UInt64(Field.clusterBits), reason: "must be 9...21")
        }
        let clusterSize = UInt64(1) << UInt64(clusterBits)

        var header = QCOW2Header(
            version: version,
            backingFileOffset: readBE64(bytes, Field.backingFileOffset),
            backingFileSize: readBE32(bytes, Field.backingFileSize),
            clusterBits: clusterBits,
            size: readBE64(bytes, Field.size),
            cryptMethod: readBE32(bytes, Field.cryptMethod),
            l1Size: readBE32(bytes, Field.l1Size),
            l1TableOffset: readBE64(bytes, Field.l1TableOffset),
            refcountTableOffset: readBE64(bytes, Field.refcountTableOffset),
            refcountTableClusters: readBE32(bytes, Field.refcountTableClusters),
            nbSnapshots: readBE32(bytes, Field.nbSnapshots),
            snapshotsOffset: readBE64(bytes, Field.snapshotsOffset),
            incompatibleFeatures: 0, compatibleFeatures: 0, autoclearFeatures: 0,
            refcountOrder: 4, headerLength: Limits.v2HeaderLength, compressionType: 0,
            extensions: [], backingFile: nil, backingFormat: nil)

        if version == 3 {
            try need(Int(Limits.v3MinHeaderLength), "qcow2 v3 header")
            header.incompatibleFeatures = readBE64(bytes, Field.incompatibleFeatures)
            header.compatibleFeatures = readBE64(bytes, Field.compatibleFeatures)
            header.autoclearFeatures = readBE64(bytes, Field.autoclearFeatures)
            header.refcountOrder = readBE32(bytes, Field.refcountOrder)
            header.headerLength = readBE32(bytes, Field.headerLength)
            let length = UInt64(header.headerLength)
            guard length >= UInt64(Limits.v3MinHeaderLength), length % 8 == 0, length <= clusterSize else {
                throw .invalidField(field: "header_length", value: length, offset: UInt64(Field.headerLength), reason: "must be a multiple of 8 in 104...cluster size")
            }
            try need(Int(length), "qcow2 v3 header")
            if length > UInt64(Field.compressionType) { header.compressionType = bytes[Field.compressionType] }
            let unknown = header.incompatibleFeatures & ~IncompatibleFeature.supported
            guard unknown == 0 else {
                throw .unsupportedIncompatibleFeatures(bits: unknown, offset: UInt64(Field.incompatibleFeatures))
            }
            guard header.compressionType == 0 else {
                throw .invalidField(field: "compression_type", value: UInt64(header.compressionType), offset: UInt64(Field.compressionType), reason: "must be 0 (zlib) without the compression-type feature bit")
            }
            guard header.refcountOrder <= 6 else {
                throw .invalidField(field: "refcount_order", value: UInt64(header.refcountOrder), offset: UInt64(Field.refcountOrder), reason: "must be 0...6")
            }
        }
        guard header.cryptMethod == 0 else {
            throw .invalidField(field: "crypt_method", value: UInt64(header.cryptMethod), offset: UInt64(Field.cryptMethod), reason: "encrypted images are not supported")
        }

        // Virtual size and L1 table: bounded before anything is allocated.
        let l1Bytes = UInt64(header.l1Size) * 8  // l1_size < 2^32: below 2^35
        guard l1Bytes <= Limits.maxL1Bytes else {
            throw .invalidField(field: "l1_size", value: UInt64(header.l1Size), offset: UInt64(Field.l1Size), reason: "L1 table larger than \(Limits.maxL1Bytes) bytes")
        }
        guard header.size <= Limits.maxHostOffset else {
            throw .invalidField(field: "size", value: header.size, offset: UInt64(Field.size), reason: "virtual size above 2^56")
        }
        let l1Needed = l1Entries(size: header.size, clusterBits: clusterBits)
        guard UInt64(header.l1Size) >= l1Needed else {
            throw .invalidField(field: "l1_size", value: UInt64(header.l1Size), offset: UInt64(Field.l1Size), reason: "too small for the virtual size (needs \(l1Needed))")
        }
        if header.l1Size > 0 {
            try checkTable(field: "l1_table_offset", fieldOffset: Field.l1TableOffset, offset: header.l1TableOffset, length: l1Bytes, what: "L1 table", clusterSize: clusterSize, fileSize: fileSize)
        }

        // Refcount table.
        let rtBytes = UInt64(header.refcountTableClusters) * clusterSize  // < 2^32 * 2^21
        guard header.refcountTableClusters > 0, rtBytes <= Limits.maxRefcountTableBytes else {
            throw .invalidField(field: "refcount_table_clusters", value: UInt64(header.refcountTableClusters), offset: UInt64(Field.refcountTableClusters), reason: "must be 1...\(Limits.maxRefcountTableBytes) bytes of clusters")
        }
        try checkTable(field: "refcount_table_offset", fieldOffset: Field.refcountTableOffset, offset: header.refcountTableOffset, length: rtBytes, what: "refcount table", clusterSize: clusterSize, fileSize: fileSize)

        // Snapshots: only located, never read.
        guard header.nbSnapshots <= Limits.maxSnapshots else {
            throw .invalidField(field: "nb_snapshots", value: UInt64(header.nbSnapshots), offset: UInt64(Field.nbSnapshots), reason: "more than \(Limits.maxSnapshots) snapshots")
        }
        if header.nbSnapshots > 0 {
            guard header.snapshotsOffset % clusterSize == 0, header.snapshotsOffset > 0, header.snapshotsOffset < fileSize,
                  header.snapshotsOffset < Limits.maxHostOffset
            else {
                throw .invalidField(field: "snapshots_offset", value: header.snapshotsOffset, offset: UInt64(Field.snapshotsOffset), reason: "not a cluster-aligned offset inside the file, below 2^56")
            }
        }

        // Metadata must not overlap: header cluster, L1 table, refcount table.
        let regions: [(String, UInt64, UInt64)] = [
            ("header cluster", 0, clusterSize),
            ("L1 table", header.l1TableOffset, l1Bytes),
            ("refcount table", header.refcountTableOffset, rtBytes),
        ]
        for i in 0..<regions.count {
            for j in (i + 1)..<regions.count where rangesOverlap(regions[i].1, regions[i].2, regions[j].1, regions[j].2) {
                throw .overlap(first: regions[i].0, second: regions[j].0, offset: max(regions[i].1, regions[j].1))
            }
        }

        // Backing file name: in the first cluster, at most 1023 bytes.
        if header.backingFileOffset != 0 {
            guard header.backingFileSize <= Limits.maxBackingFileName, header.backingFileSize > 0 else {
                throw .invalidField(field: "backing_file_size", value: UInt64(header.backingFileSize), offset: UInt64(Field.backingFileSize), reason: "must be 1...\(Limits.maxBackingFileName)")
            }
            guard let end = checkedSum(header.backingFileOffset, UInt64(header.backingFileSize)) else {
                throw .invalidField(field: "backing_file_offset", value: header.backingFileOffset, offset: UInt64(Field.backingFileOffset), reason: "offset + backing_file_size (\(header.backingFileSize)) overflows 64 bits")
            }
            guard header.backingFileOffset >= UInt64(header.headerLength), end <= clusterSize else {
                throw .invalidField(field: "backing_file_offset", value: header.backingFileOffset, offset: UInt64(Field.backingFileOffset), reason: "name must lie in the header cluster after the header")
            }
            guard end <= UInt64(bytes.count) else {
                throw .truncated(what: "backing file name", offset: header.backingFileOffset, length: UInt64(header.backingFileSize), fileSize: fileSize)
            }
            let name = Array(bytes[Int(header.backingFileOffset)..<Int(end)])
            guard !name.contains(0), let text = String(validating: name, as: UTF8.self) else {
                throw .invalidField(field: "backing_file_offset", value: header.backingFileOffset, offset: UInt64(Field.backingFileOffset), reason: "backing file name is not NUL-free UTF-8")
            }
            header.backingFile = text
        }

        // Header extensions, from the end of the header to the end marker.
        // Bounds: header_length <= cluster size (checked above, 72 for v2),
        // `limit` <= cluster size <= 2 MiB (the backing name was checked to
        // end inside the cluster), an extension length < 2^32 and
        // `position` <= `limit` on every turn; no sum below can reach 2^64.
        var position = UInt64(header.headerLength)
        let limit = header.backingFileOffset != 0 ? header.backingFileOffset : clusterSize
        while true {
            guard position + 8 <= limit else {
                // v2 images written by old tools may have no end marker.
                if version == 2 && position + 8 > limit { break }
                throw .invalidExtension(type: 0, offset: position, reason: "extensions run past \(hex(limit))")
            }
            guard position + 8 <= UInt64(bytes.count) else {
                throw .truncated(what: "header extension", offset: position, length: 8, fileSize: fileSize)
            }
            let type = readBE32(bytes, Int(position))
            let length = UInt64(readBE32(bytes, Int(position) + 4))
            if type == ExtensionType.end { break }
            let dataStart = position + 8
            let padded = (length + 7) & ~7
            guard dataStart + padded <= limit else {
                throw .invalidExtension(type: type, offset: position, reason: "length \(length) runs past \(hex(limit))")
            }
            guard dataStart + length <= UInt64(bytes.count) else {
                throw .truncated(what: "header extension", offset: position, length: 8 + length, fileSize: fileSize)
            }
            let data = Array(bytes[Int(dataStart)..<Int(dataStart + length)])
            if type == ExtensionType.backingFormat {
                guard length > 0, length <= UInt64(Limits.maxBackingFormatName), !data.contains(0),
                      let text = String(validating: data, as: UTF8.self)
                else {
                    throw .invalidExtension(type: type, offset: position, reason: "backing format name must be 1...\(Limits.maxBackingFormatName) bytes of text")
                }
                guard header.backingFormat == nil else {
                    throw .invalidExtension(type: type, offset: position, reason: "backing format given twice")
                }
                header.backingFormat = text
            }
            header.extensions.append(Extension(type: type, offset: position, data: data))
            position = dataStart + padded
        }
        return header
    }

    private static func checkTable(field: String, fieldOffset: Int, offset: UInt64, length: UInt64, what: String, clusterSize: UInt64, fileSize: UInt64) throws(QCOW2Error) {
        guard offset % clusterSize == 0, offset != 0, offset < Limits.maxHostOffset else {
            throw .invalidField(field: field, value: offset, offset: UInt64(fieldOffset), reason: "must be a non-zero cluster-aligned offset below 2^56")
        }
        guard let end = checkedSum(offset, length) else {
            throw .invalidField(field: field, value: offset, offset: UInt64(fieldOffset), reason: "\(what) end (offset + \(hex(length)) bytes) overflows 64 bits")
        }
        guard end <= fileSize else {
            throw .truncated(what: what, offset: offset, length: length, fileSize: fileSize)
        }
    }

    /// The first cluster of a new, empty image: header, backing-format
    /// extension, end marker, backing file name.
    static func encodeNew(
        version: UInt32, clusterBits: UInt32, size: UInt64, l1Size: UInt32, l1TableOffset: UInt64,
        refcountTableOffset: UInt64, refcountTableClusters: UInt32, refcountOrder: UInt32,
        backingFile: String?, backingFormat: String?
    ) throws(QCOW2Error) -> [UInt8] {
        let clusterSize = 1 << Int(clusterBits)
        var out = [UInt8](repeating: 0, count: clusterSize)
        putBE32(&out, Field.magic, Limits.magic)
        putBE32(&out, Field.version, version)
        putBE32(&out, Field.clusterBits, clusterBits)
        putBE64(&out, Field.size, size)
        putBE32(&out, Field.l1Size, l1Size)
        putBE64(&out, Field.l1TableOffset, l1TableOffset)
        putBE64(&out, Field.refcountTableOffset, refcountTableOffset)
        putBE32(&out, Field.refcountTableClusters, refcountTableClusters)
        var position = Int(Limits.v2HeaderLength)
        if version == 3 {
            putBE32(&out, Field.refcountOrder, refcountOrder)
            putBE32(&out, Field.headerLength, 112)
            position = 112
        }
        if let format = backingFormat {
            let bytes = Array(format.utf8)
            guard !bytes.isEmpty, bytes.count <= Int(Limits.maxBackingFormatName) else {
                throw .invalidCreateOption(option: "backing format length", value: UInt64(bytes.count), reason: "must be 1...\(Limits.maxBackingFormatName) bytes")
            }
            putBE32(&out, position, ExtensionType.backingFormat)
            putBE32(&out, position + 4, UInt32(bytes.count))
            out.replaceSubrange((position + 8)..<(position + 8 + bytes.count), with: bytes)
            position += 8 + (bytes.count + 7) & ~7
        }
        position += 8  // end marker: type 0, length 0
        if let name = backingFile {
            let bytes = Array(name.utf8)
            guard !bytes.isEmpty, bytes.count <= Int(Limits.maxBackingFileName), !bytes.contains(0) else {
                throw .invalidCreateOption(option: "backing file name length", value: UInt64(bytes.count), reason: "must be 1...\(Limits.maxBackingFileName) bytes without NUL")
            }
            guard position + bytes.count <= clusterSize else {
                throw .invalidCreateOption(option: "cluster_size", value: UInt64(clusterSize), reason: "header and backing file name do not fit in one cluster")
            }
            putBE64(&out, Field.backingFileOffset, UInt64(position))
            putBE32(&out, Field.backingFileSize, UInt32(bytes.count))
            out.replaceSubrange(position..<(position + bytes.count), with: bytes)
        }
        return out
    }
}
