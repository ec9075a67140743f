/// One step of host-file I/O, reported to an observer (tests use it to
/// replay a prefix of the writes, as a process killed at that point leaves
/// them).
enum IOEvent: Sendable {
    case write(offset: UInt64, bytes: [UInt8])
    case sync
}

final class L2Table: CachedCluster {
    var entries: [UInt64]
    var dirty: Bool
    var lastUse: UInt64 = 0
    init(entries: [UInt64], dirty: Bool) {
        self.entries = entries
        self.dirty = dirty
    }
}

/// One refcount block, kept as the bytes of its cluster (entries of
/// 2^order bits: packed from the least significant bit below 8 bits,
/// big-endian from 8), so it costs one cluster of memory whatever the
/// width — not 8 bytes per entry.
final class RefcountBlock: CachedCluster {
    private(set) var bytes: [UInt8]
    let order: UInt32
    var dirty: Bool
    var lastUse: UInt64 = 0

    /// `order` must be 0...6 (QCOW2Header.parse checks it).
    init(bytes: [UInt8], order: UInt32, dirty: Bool) {
        self.bytes = bytes
        self.order = min(order, 6)
        self.dirty = dirty
    }

    /// How many refcounts the block holds.
    var count: Int { (bytes.count * 8) >> Int(order) }

    subscript(index: Int) -> UInt64 {
        get {
            let bits = 1 << Int(order)
            if bits < 8 {
                let perByte = 8 / bits
                let mask = UInt8((1 << bits) - 1)
                return UInt64((bytes[index / perByte] >> UInt8((index % perByte) * bits)) & mask)
            }
            let width = bits / 8
            var value: UInt64 = 0
            for b in 0..<width { value = value << 8 | UInt64(bytes[index * width + b]) }
            return value
        }
        set {
            let bits = 1 << Int(order)
            if bits < 8 {
                let perByte = 8 / bits
                let shift = UInt8((index % perByte) * bits)
                let mask = UInt8((1 << bits) - 1) << shift
                let byte = index / perByte
                bytes[byte] = bytes[byte] & ~mask | UInt8(truncatingIfNeeded: newValue << UInt64(shift)) & mask
                return
            }
            let width = bits / 8
            for b in 0..<width {
                bytes[index * width + b] = UInt8(truncatingIfNeeded: newValue >> UInt64(8 * (width - 1 - b)))
            }
        }
    }
}

/// Something a `MetadataCache` holds: one metadata cluster, dirty until
/// `flush` writes it.
protocol CachedCluster: AnyObject {
    var dirty: Bool { get }
    /// When it was last looked up (the cache's clock), for eviction.
    var lastUse: UInt64 { get set }
}

/// Metadata clusters (L2 tables, refcount blocks) kept in memory, bounded by
/// bytes. Past `budget`, the least recently used clean entries are dropped
/// until three quarters of it are in use; they are read from the file again
/// when needed. Dirty entries stay until `flush` writes them (they hold the
/// only copy), so between two flushes the cache can exceed the budget by
/// what was changed since the last one; `flush` trims it back.
struct MetadataCache<Key: Hashable & Comparable, Value: CachedCluster> {
    private(set) var entries: [Key: Value] = [:]
    /// Bytes; at least one entry is always kept.
    var budget: UInt64
    /// Bytes one entry stands for (a cluster).
    let entryBytes: UInt64
    private var clock: UInt64 = 0

    init(budget: UInt64, entryBytes: UInt64) {
        self.budget = budget
        self.entryBytes = max(entryBytes, 1)
    }

    var count: Int { entries.count }
    var bytes: UInt64 { UInt64(entries.count) * entryBytes }

    /// The entry for `key`, marked as just used.
    mutating func get(_ key: Key) -> Value? {
        guard let value = entries[key] else { return nil }
        clock += 1
        value.lastUse = clock
        return value
    }

    /// Adds `value` and evicts if the budget is exceeded; `value` itself is
    /// never evicted by this call.
    mutating func insert(_ value: Value, for key: Key) {
        clock += 1
        value.lastUse = clock
        entries[key] = value
        if bytes > budget && entries.count >= nextTrimAt { trim(keeping: key) }
    }

    /// When a trim could not get under the budget (too many dirty entries),
    /// the next one waits for this many entries, so that inserts between two
    /// flushes do not each scan the whole cache.
    private var nextTrimAt = 0

    /// Drops least recently used clean entries (never `keeping`) until at
    /// most three quarters of the budget are used.
    mutating func trim(keeping: Key? = nil) {
        guard bytes > budget else { return }
        let target = budget / 4 * 3
        let clean = entries.filter { !$0.value.dirty && $0.key != keeping }.sorted { $0.value.lastUse < $1.value.lastUse }
        for (key, _) in clean {
            guard bytes > target, entries.count > 1 else { break }
            entries[key] = nil
        }
        nextTrimAt = bytes > budget ? entries.count + max(1, Int(budget / entryBytes / 4)) : 0
    }

    /// The dirty entries in key order (the order flush writes them).
    var dirtyEntries: [(key: Key, value: Value)] {
        entries.filter { $0.value.dirty }.sorted { $0.key < $1.key }.map { (key: $0.key, value: $0.value) }
    }
}

/// The state of one open image: header, L1 table, cached L2 tables and
/// refcounts, and the write-back bookkeeping. Not thread-safe: `QCOW2Image`
/// keeps it behind a mutex.
///
/// Metadata is written back only by `flush()`, in an order that keeps the
/// file consistent if the process dies between any two writes (see
/// Docs/qcow2.md, "Write ordering"):
///   1. refcount increments (blocks, then the refcount table, then the
///      header if the table moved), after the data they cover;
///   2. L2 tables;
///   3. L1 entries;
///   4. refcount decrements for clusters no longer referenced.
/// Each phase that wrote something ends with fdatasync.
// @unchecked: reached only through the Mutex in QCOW2Image, never shared otherwise.
final class Engine: @unchecked Sendable {
    let file: BlockFile
    let path: String
    var header: QCOW2Header
    let writable: Bool
    let backing: (any BlockReader)?
    var l1: [UInt64]
    var dirtyL1: Set<Int> = []
    /// L2 tables by host offset.
    var l2Cache: MetadataCache<UInt64, L2Table>
    var refTable: [UInt64]
    var dirtyRefTable: Set<Int> = []
    var refTableRelocated = false
    /// Refcount blocks by refcount-table index.
    var refBlocks: MetadataCache<Int, RefcountBlock>
    var pendingFree: [UInt64] = []
    /// First cluster index past every cluster the file holds or the engine
    /// has allocated.
    var endCluster: UInt64
    var freeHint: UInt64 = 0
    /// Host offsets of every L2 table and refcount block the tables name:
    /// the allocator refuses to hand one out even if a (corrupt) refcount
    /// says it is free.
    var metadataOffsets: Set<UInt64> = []
    var observer: (@Sendable (IOEvent) -> Void)?

    /// Clean L2 tables are dropped from the cache past this many bytes
    /// (64 MiB map 512 GiB of guest disk with 64 KiB clusters).
    static let l2CacheBudget: UInt64 = 64 << 20
    /// Clean refcount blocks are dropped past this many bytes (32 MiB of
    /// 16-bit refcounts cover 1 TiB of host file with 64 KiB clusters).
    static let refcountCacheBudget: UInt64 = 32 << 20

    var clusterBits: UInt64 { UInt64(header.clusterBits) }
    var clusterSize: UInt64 { header.clusterSize }
    /// parse bounds the virtual size to 2^56: the sum cannot overflow.
    var guestClusters: UInt64 { (header.size + clusterSize - 1) >> clusterBits }

    init(file: BlockFile, header: QCOW2Header, writable: Bool, backing: (any BlockReader)?, fileSize: UInt64) throws(QCOW2Error) {
        self.file = file
        self.path = file.path
        self.header = header
        self.writable = writable
        self.backing = backing
        l2Cache = MetadataCache(budget: Self.l2CacheBudget, entryBytes: header.clusterSize)
        refBlocks = MetadataCache(budget: Self.refcountCacheBudget, entryBytes: header.clusterSize)
        let l1Bytes = try file.read(at: header.l1TableOffset, count: Int(header.l1Size) * 8)
        l1 = decodeBE64Table(l1Bytes, count: Int(header.l1Size))
        let rtCount = Int(UInt64(header.refcountTableClusters) * header.clusterSize / 8)
        let rtBytes = try file.read(at: header.refcountTableOffset, count: rtCount * 8)
        refTable = decodeBE64Table(rtBytes, count: rtCount)
        // fstat sizes are below 2^63: the division form cannot overflow.
        endCluster = fileSize / header.clusterSize + (fileSize % header.clusterSize == 0 ? 0 : 1)
        for (i, entry) in refTable.enumerated() where entry != 0 {
            let offset = try QCOW2Entries.refcountBlockOffset(entry, index: UInt64(i), tableOffset: header.refcountTableOffset)
            guard offset % header.clusterSize == 0, offset < QCOW2Header.Limits.maxHostOffset else {
                throw .invalidTableEntry(table: "refcount table", index: UInt64(i), entry: entry, offset: entryAddress(header.refcountTableOffset, UInt64(i)), reason: "refcount block offset not cluster-aligned")
            }
            try checkMetadataPlacement(offset, what: "refcount block", table: "refcount table", index: UInt64(i), entry: entry, tableOffset: header.refcountTableOffset)
            metadataOffsets.insert(offset)
        }
        for (i, entry) in l1.enumerated() where entry != 0 {
            let offset = try QCOW2Entries.l2TableOffset(l1Entry: entry, index: UInt64(i), tableOffset: header.l1TableOffset, clusterSize: clusterSize)
            if offset != 0 {
                try checkMetadataPlacement(offset, what: "L2 table", table: "L1", index: UInt64(i), entry: entry, tableOffset: header.l1TableOffset)
                metadataOffsets.insert(offset)
            }
        }
    }

    // MARK: Host I/O

    func hostWrite(_ bytes: [UInt8], at offset: UInt64) throws(QCOW2Error) {
        observer?(.write(offset: offset, bytes: bytes))
        try file.write(bytes, at: offset)
    }

    func hostWrite(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        if let observer { observer(.write(offset: offset, bytes: Array(buffer))) }
        try file.write(buffer, at: offset)
    }

    func hostSync() throws(QCOW2Error) {
        observer?(.sync)
        try file.sync()
    }

    // MARK: Validation of pointers read from tables

    /// A table pointer must not land on the header cluster, the L1 table or
    /// the refcount table, and must lie in the file.
    func checkMetadataPlacement(_ offset: UInt64, what: String, table: String, index: UInt64, entry: UInt64, tableOffset: UInt64) throws(QCOW2Error) {
        let cs = clusterSize
        var clash: String?
        if offset < cs {
            clash = "header cluster"
        } else if rangesOverlap(offset, cs, header.l1TableOffset, UInt64(header.l1Size) * 8) {
            clash = "L1 table"
        } else if rangesOverlap(offset, cs, header.refcountTableOffset, UInt64(header.refcountTableClusters) * cs) {
            clash = "refcount table"
        }
        if let clash {
            throw .overlap(first: "\(what) (\(table) entry \(index) = \(hex(entry)) at \(hex(entryAddress(tableOffset, index))))", second: clash, offset: offset)
        }
        if offset >> clusterBits >= endCluster {
            throw .invalidTableEntry(table: table, index: index, entry: entry, offset: entryAddress(tableOffset, index), reason: "\(what) lies past the end of the file")
        }
    }

    // MARK: Mapping

    func l2Table(at offset: UInt64) throws(QCOW2Error) -> L2Table {
        if let table = l2Cache.get(offset) { return table }
        let bytes = try file.read(at: offset, count: Int(clusterSize))
        let table = L2Table(entries: decodeBE64Table(bytes, count: Int(header.l2Entries)), dirty: false)
        l2Cache.insert(table, for: offset)
        return table
    }

    /// The L2 table holding guest cluster `g`, or nil if its L1 entry is empty.
    func existingL2(for g: UInt64) throws(QCOW2Error) -> L2Table? {
        let l1Index = Int(g >> UInt64(header.l2Bits))
        // parse makes l1_size cover the virtual size and callers stay inside
        // it; a guest cluster past the L1 table is still refused, not trapped.
        guard l1Index < l1.count else {
            throw .outOfBounds(offset: checkedShift(g, clusterBits) ?? UInt64.max, count: clusterSize, virtualSize: header.size)
        }
        let offset = try QCOW2Entries.l2TableOffset(l1Entry: l1[l1Index], index: UInt64(l1Index), tableOffset: header.l1TableOffset, clusterSize: clusterSize)
        return offset == 0 ? nil : try l2Table(at: offset)
    }

    func l2TableOffsetFor(_ g: UInt64) -> UInt64 {
        let l1Index = Int(g >> UInt64(header.l2Bits))
        return l1Index < l1.count ? l1[l1Index] & QCOW2Entries.offsetMask : 0
    }

    /// What this layer holds for guest cluster `g`.
    func mapping(_ g: UInt64) throws(QCOW2Error) -> QCOW2Entries.L2Entry {
        guard let table = try existingL2(for: g) else { return .unallocated }
        return try mapping(g, in: table)
    }

    /// What this layer holds for `g`, from the cache alone: nil when its L2
    /// table would have to be read from the file first.
    func cachedMapping(_ g: UInt64) throws(QCOW2Error) -> QCOW2Entries.L2Entry? {
        let offset = l2TableOffsetFor(g)
        if offset == 0 { return try mapping(g) }  // validates the L1 entry; reads nothing
        guard let table = l2Cache.get(offset) else { return nil }
        return try mapping(g, in: table)
    }

    private func mapping(_ g: UInt64, in table: L2Table) throws(QCOW2Error) -> QCOW2Entries.L2Entry {
        let index = Int(g & (header.l2Entries - 1))
        let raw = table.entries[index]
        if raw == 0 { return .unallocated }
        let entry = try QCOW2Entries.decodeL2(raw, version: header.version, clusterSize: clusterSize, index: UInt64(index), tableOffset: l2TableOffsetFor(g))
        switch entry {
        case .data(let host), .zero(.some(let host)):
            try checkMetadataPlacement(host, what: "data cluster", table: "L2", index: UInt64(index), entry: raw, tableOffset: l2TableOffsetFor(g))
        default: break
        }
        return entry
    }

    /// The L2 table for `g`, allocating an empty one (and its L1 entry) if
    /// needed.
    func mutableL2(for g: UInt64) throws(QCOW2Error) -> L2Table {
        if let table = try existingL2(for: g) { return table }
        let offset = try allocateCluster()
        let table = L2Table(entries: [UInt64](repeating: 0, count: Int(header.l2Entries)), dirty: true)
        l2Cache.insert(table, for: offset)
        metadataOffsets.insert(offset)
        let l1Index = Int(g >> UInt64(header.l2Bits))
        l1[l1Index] = offset | QCOW2Entries.copied
        dirtyL1.insert(l1Index)
        return table
    }

    func setL2(_ g: UInt64, _ raw: UInt64) throws(QCOW2Error) {
        let table = try mutableL2(for: g)
        table.entries[Int(g & (header.l2Entries - 1))] = raw
        table.dirty = true
    }

    // MARK: Reads

    // Arithmetic on guest offsets below: `checkRange` (or the virtual size,
    // for reads) keeps offset + count <= virtual size <= 2^56; host offsets
    // come from validated entries (< 2^56, cluster-aligned) plus an offset
    // inside the cluster. None of these sums or shifts can wrap.

    func checkRange(_ offset: UInt64, _ count: Int) throws(QCOW2Error) {
        guard offset <= header.size, UInt64(count) <= header.size - offset else {
            throw .outOfBounds(offset: offset, count: UInt64(count), virtualSize: header.size)
        }
    }

    /// Reads guest bytes through the chain. Without `waiting` it gives up
    /// (returns false) rather than wait: for an L2 table not in the cache,
    /// for a data read the page cache cannot serve at once, or for a
    /// backing layer that would.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, waiting: Bool) throws(QCOW2Error) -> Bool {
        var done = 0
        // Past the virtual size: zeros (this image may be a shorter backing file).
        let inside = offset >= header.size ? 0 : Int(min(UInt64(buffer.count), header.size - offset))
        if inside < buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[inside...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
        while done < inside {
            let position = offset + UInt64(done)
            let g = position >> clusterBits
            let within = position & (clusterSize - 1)
            var count = min(Int(clusterSize - within), inside - done)
            guard let entry = waiting ? try mapping(g) : try cachedMapping(g) else { return false }
            switch entry {
            case .data(let host):
                // Coalesce runs of clusters contiguous on the host.
                var next = g + 1
                var expected = host + clusterSize
                while done + count < inside, case .data(let h)? = waiting ? try mapping(next) : try cachedMapping(next), h == expected {
                    count = min(count + Int(clusterSize), inside - done)
                    next += 1
                    expected += clusterSize
                }
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + count)])
                if waiting {
                    try file.read(into: piece, at: host + within)
                } else if try !file.readWithoutWaiting(into: piece, at: host + within) {
                    return false
                }
            case .zero:
                UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + count)]).initializeMemory(as: UInt8.self, repeating: 0)
            case .unallocated:
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + count)])
                if let backing {
                    if waiting {
                        try backing.read(into: piece, at: position)
                    } else if try !backing.readWithoutWaiting(into: piece, at: position) {
                        return false
                    }
                } else {
                    piece.initializeMemory(as: UInt8.self, repeating: 0)
                }
            case .compressed(let raw):
                throw .compressedCluster(guestOffset: position, entry: raw)
            }
            done += count
        }
        return true
    }

    // MARK: Writes

    func requireWritable() throws(QCOW2Error) {
        guard writable else { throw .readOnly(path: path, reason: "opened read-only") }
    }

    /// Writes guest bytes. A partial write into a cluster this layer does not
    /// hold fills the rest of the new cluster from the backing chain (or with
    /// zeros for a zero cluster), so the whole cluster is written before its
    /// L2 entry can reach the disk.
    ///
    /// Whole clusters whose host clusters follow each other (data this
    /// layer holds, or clusters allocated one after another for the write)
    /// go to the file in one write; their new L2 entries are set after it.
    func write(_ source: UnsafeRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        try requireWritable()
        try checkRange(offset, source.count)
        var run = HostRun()
        var done = 0
        while done < source.count {
            let position = offset + UInt64(done)
            let g = position >> clusterBits
            let within = position & (clusterSize - 1)
            let count = min(Int(clusterSize - within), source.count - done)
            if within == 0 && UInt64(count) == clusterSize {
                let (host, isNew) = try wholeClusterTarget(g)
                if !run.extend(host: host, guest: isNew ? g : nil, bytes: count) {
                    try flush(&run, source)
                    run = HostRun(host: host, firstGuest: g, sourceStart: done, bytes: count, newGuests: isNew ? [g] : [])
                }
            } else {
                try flush(&run, source)
                try writeCluster(g, within: within, UnsafeRawBufferPointer(rebasing: source[done..<(done + count)]))
            }
            done += count
        }
        try flush(&run, source)
    }

    /// Whole clusters of one write, contiguous in the file and in the
    /// source, not yet written.
    struct HostRun {
        var host: UInt64 = 0
        var firstGuest: UInt64 = 0
        var sourceStart = 0
        var bytes = 0
        /// The guest clusters of the run that get an L2 entry once written.
        var newGuests: [UInt64] = []

        mutating func extend(host next: UInt64, guest: UInt64?, bytes count: Int) -> Bool {
            guard bytes > 0, next == host + UInt64(bytes) else { return false }
            bytes += count
            if let guest { newGuests.append(guest) }
            return true
        }
    }

    private func flush(_ run: inout HostRun, _ source: UnsafeRawBufferPointer) throws(QCOW2Error) {
        guard run.bytes > 0 else { return }
        try hostWrite(UnsafeRawBufferPointer(rebasing: source[run.sourceStart..<(run.sourceStart + run.bytes)]), at: run.host)
        for g in run.newGuests {
            let host = run.host + (g - run.firstGuest) * clusterSize
            try setL2(g, host | QCOW2Entries.copied)
        }
        run = HostRun()
    }

    /// Where a whole-cluster write of guest cluster `g` goes: the data
    /// cluster this layer holds (false), or a cluster taken for it now
    /// (true: its L2 entry is set once the data is written).
    func wholeClusterTarget(_ g: UInt64) throws(QCOW2Error) -> (host: UInt64, isNew: Bool) {
        switch try mapping(g) {
        case .data(let host): return (host, false)
        case .compressed(let raw): throw .compressedCluster(guestOffset: g << clusterBits, entry: raw)
        case .zero(.some(let preallocated)): return (preallocated, true)
        case .zero(nil), .unallocated: return (try allocateCluster(), true)
        }
    }

    /// `write`, if it changes no table: every cluster the range touches is
    /// data this layer holds, its L2 table cached. Otherwise false, having
    /// written nothing.
    func overwriteInPlace(_ source: UnsafeRawBufferPointer, at offset: UInt64) throws(QCOW2Error) -> Bool {
        try requireWritable()
        try checkRange(offset, source.count)
        guard source.count > 0 else { return true }
        let first = offset >> clusterBits, last = (offset + UInt64(source.count) - 1) >> clusterBits
        var hosts: [UInt64] = []
        for g in first...last {
            guard case .data(let host)? = try cachedMapping(g) else { return false }
            hosts.append(host)
        }
        var done = 0
        for host in hosts {
            let within = (offset + UInt64(done)) & (clusterSize - 1)
            let count = min(Int(clusterSize - within), source.count - done)
            try hostWrite(UnsafeRawBufferPointer(rebasing: source[done..<(done + count)]), at: host + within)
            done += count
        }
        return true
    }

    func writeCluster(_ g: UInt64, within: UInt64, _ piece: UnsafeRawBufferPointer) throws(QCOW2Error) {
        let entry = try mapping(g)
        switch entry {
        case .data(let host):
            try hostWrite(piece, at: host + within)
            return
        case .compressed(let raw):
            throw .compressedCluster(guestOffset: g << clusterBits + within, entry: raw)
        case .zero, .unallocated:
            break
        }
        let host: UInt64
        if case .zero(.some(let preallocated)) = entry {
            host = preallocated
        } else {
            host = try allocateCluster()
        }
        if within == 0 && UInt64(piece.count) == clusterSize {
            try hostWrite(piece, at: host)
        } else {
            var cluster = [UInt8](repeating: 0, count: Int(clusterSize))
            var failure: QCOW2Error?
            cluster.withUnsafeMutableBytes { buf in
                if case .unallocated = entry, let backing {
                    do throws(QCOW2Error) { try backing.read(into: buf, at: g << clusterBits) } catch { failure = error }
                }
                UnsafeMutableRawBufferPointer(rebasing: buf[Int(within)..<(Int(within) + piece.count)]).copyMemory(from: piece)
            }
            if let failure { throw failure }
            // Bytes past the virtual size stay zero.
            let clusterStart = g << clusterBits
            if clusterStart + clusterSize > header.size {
                let keep = Int(header.size - clusterStart)
                for i in keep..<cluster.count { cluster[i] = 0 }
            }
            try hostWrite(cluster, at: host)
        }
        try setL2(g, host | QCOW2Entries.copied)
    }

    /// Makes the range read as zeros. Whole clusters become zero clusters
    /// (v3) without data; partial clusters are written with zeros.
    func writeZeroes(at offset: UInt64, count: UInt64) throws(QCOW2Error) {
        try requireWritable()
        try checkRange(offset, Int(clamping: count))
        var position = offset
        let end = offset + count
        let zeros = [UInt8](repeating: 0, count: Int(clusterSize))
        while position < end {
            let g = position >> clusterBits
            let within = position & (clusterSize - 1)
            let n = min(clusterSize - within, end - position)
            let clusterEnd = min((g + 1) << clusterBits, header.size)
            let whole = within == 0 && position + n >= clusterEnd
            let entry = try mapping(g)
            let readsZero: Bool
            switch entry {
            case .zero: readsZero = true
            case .unallocated: readsZero = backing == nil
            default: readsZero = false
            }
            if !readsZero {
                if whole && header.version >= 3 {
                    if case .data(let host) = entry { pendingFree.append(host) }
                    try setL2(g, QCOW2Entries.zero)
                } else {
                    var failure: QCOW2Error?
                    zeros.withUnsafeBytes { buf in
                        do throws(QCOW2Error) {
                            try writeCluster(g, within: within, UnsafeRawBufferPointer(rebasing: buf[0..<Int(n)]))
                        } catch { failure = error }
                    }
                    if let failure { throw failure }
                }
            }
            position += n
        }
    }

    /// Deallocates every whole cluster in the range: it then reads from the
    /// backing chain (or as zeros without one). Partial clusters are left
    /// as they are.
    func discard(at offset: UInt64, count: UInt64) throws(QCOW2Error) {
        try requireWritable()
        try checkRange(offset, Int(clamping: count))
        let end = offset + count
        var g = (offset + clusterSize - 1) >> clusterBits
        while true {
            let start = g << clusterBits
            let clusterEnd = min(start + clusterSize, header.size)
            guard start < end, clusterEnd <= end, start < header.size else { break }
            let entry = try mapping(g)
            switch entry {
            case .unallocated: break
            case .compressed(let raw): throw .compressedCluster(guestOffset: start, entry: raw)
            case .data(let host), .zero(.some(let host)):
                pendingFree.append(host)
                try setL2(g, 0)
            case .zero(.none):
                try setL2(g, 0)
            }
            g += 1
        }
    }

    // MARK: Refcounts and allocation

    var refBlockEntries: UInt64 { header.refcountBlockEntries }

    func refcountBlock(_ tableIndex: Int, create: Bool) throws(QCOW2Error) -> RefcountBlock? {
        if let block = refBlocks.get(tableIndex) { return block }
        guard tableIndex < refTable.count else { return nil }
        let offset = refTable[tableIndex]
        if offset != 0 {
            let bytes = try file.read(at: offset, count: Int(clusterSize))
            let block = RefcountBlock(bytes: bytes, order: header.refcountOrder, dirty: false)
            refBlocks.insert(block, for: tableIndex)
            return block
        }
        guard create else { return nil }
        // A new block goes at the end of the file; its own refcount may live
        // in itself or in another block.
        let blockCluster = endCluster
        let blockOffset = try hostOffset(ofCluster: blockCluster)
        endCluster += 1
        let block = RefcountBlock(bytes: [UInt8](repeating: 0, count: Int(clusterSize)), order: header.refcountOrder, dirty: true)
        refBlocks.insert(block, for: tableIndex)
        refTable[tableIndex] = blockOffset
        metadataOffsets.insert(blockOffset)
        dirtyRefTable.insert(tableIndex)
        try adjustRefcount(blockCluster, by: 1)
        return block
    }

    func refcount(_ cluster: UInt64) throws(QCOW2Error) -> UInt64 {
        let tableIndex = Int(cluster / refBlockEntries)
        guard let block = try refcountBlock(tableIndex, create: false) else { return 0 }
        return block[Int(cluster % refBlockEntries)]
    }

    func adjustRefcount(_ cluster: UInt64, by delta: Int) throws(QCOW2Error) {
        let tableIndex = Int(cluster / refBlockEntries)
        if tableIndex >= refTable.count { try growRefcountTable(toCover: tableIndex) }
        guard let block = try refcountBlock(tableIndex, create: true) else {
            throw .imageTooLarge(hostOffset: checkedShift(cluster, clusterBits) ?? UInt64.max)
        }
        let index = Int(cluster % refBlockEntries)
        let old = block[index]
        if delta > 0 {
            guard old < header.refcountMax else { throw .refcountOverflow(hostOffset: checkedShift(cluster, clusterBits) ?? UInt64.max) }
            block[index] = old + 1
        } else {
            guard old > 0 else {
                throw .invalidTableEntry(table: "refcount block", index: UInt64(index), entry: 0, offset: refTable[tableIndex] + UInt64(index) * header.refcountBits / 8, reason: "freeing a cluster whose refcount is already zero")
            }
            block[index] = old - 1
        }
        block.dirty = true
    }

    /// Moves the refcount table to a larger place at the end of the file.
    /// The old table's clusters are freed after the header points to the new
    /// one (phase 4 of the next flush).
    func growRefcountTable(toCover tableIndex: Int) throws(QCOW2Error) {
        let perCluster = clusterSize / 8
        let needed = (UInt64(tableIndex) + 1 + perCluster - 1) / perCluster
        let newClusters = max(UInt64(header.refcountTableClusters) * 2, needed)
        guard let newBytes = checkedProduct(newClusters, clusterSize), newBytes <= QCOW2Header.Limits.maxRefcountTableBytes else {
            throw .imageTooLarge(hostOffset: checkedShift(endCluster, clusterBits) ?? UInt64.max)
        }
        let oldOffset = header.refcountTableOffset
        let oldClusters = UInt64(header.refcountTableClusters)
        let start = endCluster
        // newClusters <= 8 MiB / 512; start < 2^56 >> cluster_bits once checked.
        let startOffset = try hostOffset(ofCluster: start)
        _ = try hostOffset(ofCluster: start + newClusters)
        endCluster += newClusters
        refTable += [UInt64](repeating: 0, count: Int(newClusters * perCluster) - refTable.count)
        header.refcountTableOffset = startOffset
        header.refcountTableClusters = UInt32(newClusters)
        refTableRelocated = true
        for k in 0..<newClusters { try adjustRefcount(start + k, by: 1) }
        for k in 0..<oldClusters { pendingFree.append(oldOffset + k * clusterSize) }
    }

    /// The host offset of cluster `c`, refused at 2^56 and above (an L2
    /// entry cannot address it); checked before shifting, so nothing wraps.
    func hostOffset(ofCluster c: UInt64) throws(QCOW2Error) -> UInt64 {
        guard let offset = checkedShift(c, clusterBits), offset < QCOW2Header.Limits.maxHostOffset else {
            throw .imageTooLarge(hostOffset: checkedShift(c, clusterBits) ?? UInt64.max)
        }
        return offset
    }

    /// Finds a free cluster (refcount zero, never one freed since the last
    /// flush: frees are applied only in phase 4) and takes a reference.
    func allocateCluster() throws(QCOW2Error) -> UInt64 {
        var c = freeHint
        while c < endCluster {
            if try refcount(c) == 0 { break }
            c += 1
        }
        if c >= endCluster {
            c = endCluster
        }
        let offset = try hostOffset(ofCluster: c)
        if c == endCluster { endCluster += 1 }
        // A refcount of zero on metadata means the refcounts are corrupt:
        // refuse rather than overwrite it.
        let cs = clusterSize
        if offset < cs || metadataOffsets.contains(offset)
            || rangesOverlap(offset, cs, header.l1TableOffset, UInt64(header.l1Size) * 8)
            || rangesOverlap(offset, cs, header.refcountTableOffset, UInt64(header.refcountTableClusters) * cs)
        {
            throw .overlap(first: "cluster the refcounts say is free", second: "metadata in use", offset: offset)
        }
        freeHint = c + 1
        try adjustRefcount(c, by: 1)
        return offset
    }

    // MARK: Flush

    func writeDirtyRefcountBlocks() throws(QCOW2Error) -> Bool {
        var wrote = false
        for (tableIndex, block) in refBlocks.dirtyEntries {
            try hostWrite(block.bytes, at: refTable[tableIndex])
            block.dirty = false
            wrote = true
        }
        return wrote
    }

    func flush() throws(QCOW2Error) {
        guard writable else { return }
        // Phase 1: data and refcount increments.
        _ = try writeDirtyRefcountBlocks()
        try hostSync()
        if refTableRelocated {
            try hostWrite(encodeBE64Table(refTable), at: header.refcountTableOffset)
            try hostSync()
            var fields = [UInt8](repeating: 0, count: 12)
            putBE64(&fields, 0, header.refcountTableOffset)
            putBE32(&fields, 8, header.refcountTableClusters)
            try hostWrite(fields, at: UInt64(QCOW2Header.Field.refcountTableOffset))
            try hostSync()
            refTableRelocated = false
            dirtyRefTable = []
        } else if !dirtyRefTable.isEmpty {
            for index in dirtyRefTable.sorted() {
                try hostWrite(be64Bytes(refTable[index]), at: header.refcountTableOffset + UInt64(index) * 8)
            }
            dirtyRefTable = []
            try hostSync()
        }
        // Phase 2: L2 tables.
        var wroteL2 = false
        for (offset, table) in l2Cache.dirtyEntries {
            try hostWrite(encodeBE64Table(table.entries), at: offset)
            table.dirty = false
            wroteL2 = true
        }
        if wroteL2 { try hostSync() }
        // Phase 3: L1 entries.
        if !dirtyL1.isEmpty {
            for index in dirtyL1.sorted() {
                try hostWrite(be64Bytes(l1[index]), at: header.l1TableOffset + UInt64(index) * 8)
            }
            dirtyL1 = []
            try hostSync()
        }
        // Phase 4: refcount decrements, now that nothing references them.
        if !pendingFree.isEmpty {
            let frees = pendingFree
            pendingFree = []
            for host in frees {
                try adjustRefcount(host >> clusterBits, by: -1)
                freeHint = min(freeHint, host >> clusterBits)
            }
            if try writeDirtyRefcountBlocks() { try hostSync() }
        }
        // Everything is clean now: back within the budgets.
        l2Cache.trim()
        refBlocks.trim()
    }

    /// Clears autoclear bits this engine does not maintain, before anything
    /// else is written.
    func clearUnknownAutoclear() throws(QCOW2Error) {
        let keep = header.autoclearFeatures & QCOW2Header.supportedAutoclear
        guard header.version >= 3, keep != header.autoclearFeatures else { return }
        header.autoclearFeatures = keep
        try hostWrite(be64Bytes(keep), at: UInt64(QCOW2Header.Field.autoclearFeatures))
        try hostSync()
    }

    // MARK: Enumeration

    /// The first guest cluster at or after `g` that this layer holds (data or
    /// a zero cluster), read from the live tables.
    func nextAllocated(atOrAfter start: UInt64) throws(QCOW2Error) -> UInt64? {
        let total = guestClusters
        let perL2 = header.l2Entries
        var g = start
        while g < total {
            let l1Index = g / perL2
            guard let table = try existingL2(for: g) else {
                g = (l1Index + 1) * perL2
                continue
            }
            let base = l1Index * perL2
            let last = min(perL2, total - base)
            var i = g - base
            while i < last {
                if table.entries[Int(i)] != 0 {
                    if case .unallocated = try mapping(base + i) {} else { return base + i }
                }
                i += 1
            }
            g = base + perL2
        }
        return nil
    }
}
