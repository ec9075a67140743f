#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// An open qcow2 image (version 2 or 3), readable through its backing chain
/// and writable cluster by cluster.
///
/// Concurrency: every method may be called from any thread or task. One
/// mutex per image serialises metadata lookups, allocation and the I/O done
/// under them; a reader and a writer of the same image therefore never see
/// a half-updated table. Backing layers have their own locks, taken after
/// this one (top to bottom only, so no cycle). Calls block the caller on
/// disk I/O: from async code, call them from a thread that may block.
///
/// Durability: data and metadata reach the disk only at `flush()` (or
/// `close()`); see Docs/qcow2.md for the write ordering that keeps the file
/// consistent if the process dies at any point.
public final class QCOW2Image: BlockReader {
    public let path: String
    public let virtualSize: UInt64
    public let clusterSize: UInt64
    public let isWritable: Bool
    /// The layer below, if any.
    public let backing: (any BlockReader)?
    let engine: Mutex<Engine>

    /// Where the backing layer comes from.
    public enum Backing: Sendable {
        /// Open the backing file the header names (read-only), recursively.
        case fromHeader
        /// Ignore any backing file: unallocated clusters read as zeros.
        case none
        /// Use this reader (for example a layer another party writes).
        case reader(any BlockReader)
    }

    /// Deepest backing chain `open` follows.
    public static let maxChainDepth = 32

    init(engine: Engine, path: String, writable: Bool) {
        self.path = path
        virtualSize = engine.header.size
        clusterSize = engine.header.clusterSize
        isWritable = writable
        backing = engine.backing
        self.engine = Mutex(engine)
    }

    /// Opens an image. Writable images must be clean (no dirty or corrupt
    /// bit, no internal snapshots); unknown autoclear bits are cleared before
    /// the first write.
    public static func open(path: String, writable: Bool = false, backing: Backing = .fromHeader) throws(QCOW2Error) -> QCOW2Image {
        try open(path: path, writable: writable, backing: backing, depth: 0)
    }

    static func open(path: String, writable: Bool, backing: Backing, depth: Int) throws(QCOW2Error) -> QCOW2Image {
        guard depth <= maxChainDepth else { throw .backingChainTooDeep(path: path, limit: maxChainDepth) }
        let file = try BlockFile(path: path, writable: writable)
        let fileSize = try file.size()
        let prefix = try file.read(at: 0, count: Int(min(fileSize, UInt64(QCOW2Header.minimumPrefix))))
        // Read the whole first cluster once the cluster size is known.
        var clusterSize = 1 << 16
        if prefix.count >= 24 {
            let bits = readBE32(prefix, QCOW2Header.Field.clusterBits)
            if (QCOW2Header.Limits.minClusterBits...QCOW2Header.Limits.maxClusterBits).contains(bits) { clusterSize = 1 << Int(bits) }
        }
        let first = try file.read(at: 0, count: Int(min(fileSize, UInt64(clusterSize))))
        let header = try QCOW2Header.parse(first, fileSize: fileSize)
        if writable {
            var reasons: [String] = []
            if header.incompatibleFeatures & QCOW2Header.IncompatibleFeature.dirty != 0 { reasons.append("the dirty bit is set (run qemu-img check -r all)") }
            if header.incompatibleFeatures & QCOW2Header.IncompatibleFeature.corrupt != 0 { reasons.append("the corrupt bit is set") }
            if header.nbSnapshots > 0 { reasons.append("it has \(header.nbSnapshots) internal snapshot(s)") }
            if !reasons.isEmpty { throw .readOnly(path: path, reason: reasons.joined(separator: "; ")) }
        }
        let reader: (any BlockReader)?
        switch backing {
        case .none: reader = nil
        case .reader(let given): reader = given
        case .fromHeader:
            if let name = header.backingFile {
                reader = try openBacking(name: name, format: header.backingFormat, relativeTo: path, depth: depth + 1)
            } else {
                reader = nil
            }
        }
        let engine = try Engine(file: file, header: header, writable: writable, backing: reader, fileSize: fileSize)
        if writable { try engine.clearUnknownAutoclear() }
        return QCOW2Image(engine: engine, path: path, writable: writable)
    }

    /// The path of a backing file as the image names it, resolved against
    /// the image's directory when relative.
    public static func resolve(backingName name: String, relativeTo imagePath: String) -> String {
        if name.hasPrefix("/") { return name }
        guard let slash = imagePath.lastIndex(of: "/") else { return name }
        return String(imagePath[...slash]) + name
    }

    /// "qcow2" if the file starts with the qcow2 magic, else "raw".
    public static func probeFormat(path: String) throws(QCOW2Error) -> String {
        let file = try BlockFile(path: path, writable: false)
        let magic = try file.read(at: 0, count: 4)
        return readBE32(magic, 0) == QCOW2Header.Limits.magic ? "qcow2" : "raw"
    }

    static func openBacking(name: String, format: String?, relativeTo imagePath: String, depth: Int) throws(QCOW2Error) -> any BlockReader {
        let resolved = resolve(backingName: name, relativeTo: imagePath)
        let kind: String
        if let format { kind = format } else { kind = try probeFormat(path: resolved) }
        switch kind {
        case "qcow2": return try open(path: resolved, writable: false, backing: .fromHeader, depth: depth)
        case "raw": return try RawImage(path: resolved)
        default: throw .unsupportedBackingFormat(format: kind, path: resolved)
        }
    }

    // MARK: Properties

    /// The validated header as it is now (the refcount table may move).
    public var header: QCOW2Header { engine.withLock { $0.header } }

    /// The layers from this image down: self, its backing, and so on.
    public var chain: [any BlockReader] {
        var out: [any BlockReader] = [self]
        var next = backing
        while let layer = next {
            out.append(layer)
            next = (layer as? QCOW2Image)?.backing
        }
        return out
    }

    public var guestClusterCount: UInt64 { (virtualSize + clusterSize - 1) / clusterSize }

    // MARK: Reads

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        try engine.withLock { engine throws(QCOW2Error) in _ = try engine.read(into: buffer, at: offset, waiting: true) }
    }

    /// `read`, unless it would wait: for the image's lock (another caller
    /// is in it, maybe flushing), for an L2 table not in the cache, or for
    /// the disk (the page cache did not hold the data; preadv2 RWF_NOWAIT).
    public func readWithoutWaiting(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) -> Bool {
        try engine.withLockIfAvailable { engine throws(QCOW2Error) in try engine.read(into: buffer, at: offset, waiting: false) } ?? false
    }

    /// What this layer holds for one guest cluster (index = offset / cluster size).
    public func clusterState(_ guestClusterIndex: UInt64) throws(QCOW2Error) -> QCOW2Entries.L2Entry {
        guard guestClusterIndex < guestClusterCount else {
            throw .outOfBounds(offset: checkedProduct(guestClusterIndex, clusterSize) ?? UInt64.max, count: clusterSize, virtualSize: virtualSize)
        }
        return try engine.withLock { engine throws(QCOW2Error) in try engine.mapping(guestClusterIndex) }
    }

    /// The first guest cluster at or after `guestClusterIndex` that this
    /// layer holds (data or a zero cluster; not what backing files hold), in
    /// ascending guest order. It reads the live tables under the lock, so a
    /// cluster allocated after an enumeration began is found by the next call
    /// that starts at or below it.
    public func nextAllocatedCluster(atOrAfter guestClusterIndex: UInt64) throws(QCOW2Error) -> UInt64? {
        try engine.withLock { engine throws(QCOW2Error) in try engine.nextAllocated(atOrAfter: guestClusterIndex) }
    }

    /// How many guest clusters this layer holds (data and zero clusters).
    public func allocatedClusterCount() throws(QCOW2Error) -> UInt64 {
        var count: UInt64 = 0
        var g: UInt64 = 0
        while let next = try nextAllocatedCluster(atOrAfter: g) {
            count += 1
            g = next + 1
        }
        return count
    }

    // MARK: Writes

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        try engine.withLock { engine throws(QCOW2Error) in try engine.write(buffer, at: offset) }
    }

    /// `write`, unless it would wait for the image's lock or change a table
    /// (allocate a cluster, read an L2 table): then false, nothing written.
    /// The data still goes through the page cache, which may make it wait.
    public func overwriteWithoutAllocating(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(QCOW2Error) -> Bool {
        try engine.withLockIfAvailable { engine throws(QCOW2Error) in try engine.overwriteInPlace(buffer, at: offset) } ?? false
    }

    public func write(_ bytes: [UInt8], at offset: UInt64) throws(QCOW2Error) {
        var failure: QCOW2Error?
        bytes.withUnsafeBytes { buf in
            do throws(QCOW2Error) { try write(buf, at: offset) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Makes `count` bytes at `offset` read as zeros.
    public func writeZeroes(at offset: UInt64, count: UInt64) throws(QCOW2Error) {
        try engine.withLock { engine throws(QCOW2Error) in try engine.writeZeroes(at: offset, count: count) }
    }

    /// Deallocates the whole clusters inside the range (they then read from
    /// the backing chain, or as zeros without one); partial clusters at the
    /// edges are left unchanged.
    public func discard(at offset: UInt64, count: UInt64) throws(QCOW2Error) {
        try engine.withLock { engine throws(QCOW2Error) in try engine.discard(at: offset, count: count) }
    }

    /// Makes every write acknowledged so far durable, metadata in the
    /// crash-safe order. A no-op on a read-only image.
    public func flush() throws(QCOW2Error) {
        try engine.withLock { engine throws(QCOW2Error) in try engine.flush() }
    }

    /// Test hook: every host write and sync, in order.
    func setObserver(_ observer: (@Sendable (IOEvent) -> Void)?) {
        engine.withLock { $0.observer = observer }
    }

    // MARK: Creation

    /// Creates an empty image (fails if `path` exists) and opens it writable.
    /// `backingFile` is stored as given (relative names resolve against the
    /// new image's directory); its format is probed when `backingFormat` is
    /// nil.
    public static func create(
        path: String, virtualSize: UInt64, clusterBits: UInt32 = 16, version: UInt32 = 3,
        refcountOrder: UInt32 = 4, backingFile: String? = nil, backingFormat: String? = nil
    ) throws(QCOW2Error) -> QCOW2Image {
        guard version == 2 || version == 3 else {
            throw .invalidCreateOption(option: "version", value: UInt64(version), reason: "must be 2 or 3")
        }
        guard (QCOW2Header.Limits.minClusterBits...QCOW2Header.Limits.maxClusterBits).contains(clusterBits) else {
            throw .invalidCreateOption(option: "cluster_bits", value: UInt64(clusterBits), reason: "must be 9...21")
        }
        guard refcountOrder <= 6, version == 3 || refcountOrder == 4 else {
            throw .invalidCreateOption(option: "refcount_order", value: UInt64(refcountOrder), reason: "must be 0...6 (4 for version 2)")
        }
        guard virtualSize <= QCOW2Header.Limits.maxHostOffset else {
            throw .invalidCreateOption(option: "size", value: virtualSize, reason: "virtual size above 2^56")
        }
        let size = (virtualSize + 511) & ~511
        let cs = UInt64(1) << UInt64(clusterBits)
        let l1Size = QCOW2Header.l1Entries(size: size, clusterBits: clusterBits)
        guard l1Size * 8 <= QCOW2Header.Limits.maxL1Bytes else {
            throw .invalidCreateOption(option: "size", value: virtualSize, reason: "L1 table would exceed \(QCOW2Header.Limits.maxL1Bytes) bytes")
        }
        var format = backingFormat
        if let name = backingFile, format == nil {
            format = try probeFormat(path: resolve(backingName: name, relativeTo: path))
        }
        // Layout: header, refcount table, refcount blocks, L1 table.
        let l1Clusters = max(1, (l1Size * 8 + cs - 1) / cs)
        let perBlock = cs * 8 / (UInt64(1) << UInt64(refcountOrder))
        var blocks: UInt64 = 1
        var tableClusters: UInt64 = 1
        while true {
            let total = 1 + tableClusters + blocks + l1Clusters
            let needBlocks = (total + perBlock - 1) / perBlock
            let needTable = max(1, (needBlocks * 8 + cs - 1) / cs)
            if needBlocks <= blocks && needTable <= tableClusters { break }
            blocks = max(blocks, needBlocks)
            tableClusters = max(tableClusters, needTable)
        }
        let total = 1 + tableClusters + blocks + l1Clusters
        let tableOffset = cs
        let blocksOffset = cs * (1 + tableClusters)
        let l1Offset = cs * (1 + tableClusters + blocks)
        var table = [UInt64](repeating: 0, count: Int(tableClusters * cs / 8))
        for b in 0..<blocks { table[Int(b)] = blocksOffset + b * cs }
        var counts = [UInt64](repeating: 0, count: Int(blocks * perBlock))
        for c in 0..<total { counts[Int(c)] = 1 }

        let head = try QCOW2Header.encodeNew(
            version: version, clusterBits: clusterBits, size: size, l1Size: UInt32(l1Size), l1TableOffset: l1Offset,
            refcountTableOffset: tableOffset, refcountTableClusters: UInt32(tableClusters), refcountOrder: refcountOrder,
            backingFile: backingFile, backingFormat: backingFile == nil ? nil : format)
        do {
            let file = try BlockFile(path: path, writable: true, create: true)
            do throws(QCOW2Error) {
                try file.write(encodeBE64Table(table), at: tableOffset)
                try file.write(QCOW2Entries.encodeRefcounts(counts, order: refcountOrder), at: blocksOffset)
                try file.write([UInt8](repeating: 0, count: Int(l1Clusters * cs)), at: l1Offset)
                // The header last: until it exists the file is not an image.
                try file.write(head, at: 0)
                try file.sync()
            } catch {
                unlink(path)
                throw error
            }
        }
        return try open(path: path, writable: true)
    }

    /// Creates an empty overlay over `backingFile`, the same virtual size.
    public static func createOverlay(
        path: String, backingFile: String, backingFormat: String? = nil, clusterBits: UInt32 = 16
    ) throws(QCOW2Error) -> QCOW2Image {
        let resolved = resolve(backingName: backingFile, relativeTo: path)
        let format: String
        if let backingFormat { format = backingFormat } else { format = try probeFormat(path: resolved) }
        let size: UInt64
        switch format {
        case "qcow2": size = try open(path: resolved, writable: false, backing: .none).virtualSize
        case "raw": size = try RawImage(path: resolved).virtualSize
        default: throw .unsupportedBackingFormat(format: format, path: resolved)
        }
        return try create(path: path, virtualSize: size, clusterBits: clusterBits, backingFile: backingFile, backingFormat: format)
    }
}
