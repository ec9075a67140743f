/// An incremental push parser for QEMU's pre-copy migration stream.
///
/// Bytes arrive in chunks of any size (one byte at a time works); each call
/// to `consume` reports, in stream order, every non-page byte as `verbatim`
/// (tagged with its `Region`), the RAM block list once, and every RAM page
/// record as `page`. Memory is bounded: one scratch buffer of one page (or
/// 512 bytes) holds a field split across chunks; everything else is handed
/// out as slices of the caller's buffer. Once the RAM END section and its
/// footer are read, the rest (device sections, EOF, VM description) is tail
/// and passes through unparsed: device sections carry no length.
///
/// A background snapshot's stream (QEMU's `background-snapshot` capability)
/// has no SWITCHOVER_START and no RAM END section: QEMU saves the device
/// state into a buffer at the pause and appends it after the last PART
/// section. There the tail begins at the type byte of the first FULL
/// section that follows a PART section (`withoutRAMEnd`).
///
/// Anything the parser does not understand exactly is refused with a
/// `MigrationStreamError`; after an error every further call throws it again.
///
///     var parser = MigrationStreamParser(pageSize: 4096)
///     try parser.consume(chunk, into: &sink)   // as many times as needed
///     try parser.finish()                      // "truncated in …" unless the tail began
public struct MigrationStreamParser: ~Copyable, @unchecked Sendable {
    public typealias Region = MigrationStream.Region
    typealias SectionType = MigrationStream.SectionType
    typealias Flag = MigrationStream.Flag

    /// The target page size (4096 on x86); also the RAM record flag mask plus one.
    public let pageSize: Int
    private let flagMask: UInt64
    private let scratch: UnsafeMutableRawPointer
    private var scratchCount = 0

    private var state: State = .fileHeader
    private var phase: Phase = .beforeConfiguration
    private var context: Context = .start
    /// Stream offset of the current chunk's first byte.
    private var chunkBase: UInt64 = 0
    private var failure: MigrationStreamError?

    /// The RAM blocks of the RAM START section, in stream order.
    public private(set) var blocks: [MigrationStream.Block] = []
    private var names: [[UInt8]] = []
    /// The RAM section's id, once its START section was read.
    public private(set) var ramSectionID: UInt32?
    /// Whether sections end with footers; known after the RAM START section.
    public private(set) var hasFooters: Bool?
    /// Whether the stream had a SWITCHOVER_START command.
    public private(set) var sawSwitchover = false
    /// Whether the tail began at a FULL device section right after a PART
    /// section, with no RAM END section: a background snapshot's stream.
    public private(set) var withoutRAMEnd = false
    /// Bytes of tail seen so far.
    public private(set) var tailBytes: UInt64 = 0
    /// Bytes consumed so far.
    public var consumed: UInt64 { chunkBase }

    private var lastBlock = -1
    private var recordFlags: UInt64 = 0
    private var recordOffset: UInt64 = 0
    private var recordBlock = 0
    private var recordAt: UInt64 = 0
    private var memSizeTotal: UInt64 = 0
    private var blockSum: UInt64 = 0
    private var capabilitiesLeft: UInt32 = 0

    private var pendingStart = 0
    private var pendingEnd = 0
    private var pendingRegion: Region = .prologue

    /// Limits on sizes read from the wire (QEMU's own are smaller).
    static let maximumConfigurationName: UInt32 = 4096
    static let maximumCapabilities: UInt32 = 64
    static let maximumBlocks = 4096

    /// `pageSize` must be a power of two from 512 to 65536.
    public init(pageSize: Int = 4096) {
        precondition(pageSize >= 512 && pageSize <= 65536 && pageSize & (pageSize - 1) == 0, "page size \(pageSize)")
        self.pageSize = pageSize
        flagMask = UInt64(pageSize - 1)
        scratch = UnsafeMutableRawPointer.allocate(byteCount: max(pageSize, 512), alignment: 16)
    }

    deinit { scratch.deallocate() }

    /// True once the RAM END section is done and the tail has begun: the
    /// stream may end here.
    public var isComplete: Bool { failure == nil && state == .tail && tailBytes > 0 }

    /// When exactly a prologue was consumed (the RAM START section, with
    /// its footer when the stream has footers, and nothing after it):
    /// whether the stream has footers. Nil otherwise.
    var endOfPrologue: Bool? {
        guard failure == nil, !sawLive else { return nil }
        if phase == .live && state == .sectionType { return hasFooters == true }
        if state == .footer && context == .start && hasFooters == nil { return false }
        return nil
    }
    private var sawLive = false
    /// A PART section began (a FULL section after one begins the tail).
    private var sawPart = false

    /// Feed the next chunk; `sink` receives what it completes.
    public mutating func consume<S: MigrationStreamSink>(
        _ bytes: UnsafeRawBufferPointer, into sink: inout S
    ) throws(MigrationStreamError) {
        if let failure { throw failure }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var i = 0
        do {
            try run(base, bytes.count, &i, &sink)
        } catch {
            flush(base, &sink)
            failure = error
            state = .failed
            chunkBase += UInt64(i)
            throw error
        }
        flush(base, &sink)
        chunkBase += UInt64(bytes.count)
    }

    /// The stream ended: refuses it unless the tail began.
    public func finish() throws(MigrationStreamError) {
        if let failure { throw failure }
        if state == .tail && tailBytes > 0 { return }
        throw .truncated(in: state == .tail ? "the tail (nothing after the RAM END section)" : state.place, at: chunkBase)
    }

    // MARK: - The state machine

    enum Phase { case beforeConfiguration, beforeRAM, live, switchedOver, tail }
    enum Context { case start, part, end }

    enum State: Equatable {
        case fileHeader
        case sectionType
        case configNameLength
        case configName(remaining: UInt32)
        case configNext
        case subsectionNameLength
        case subsectionRest(nameLength: Int)
        case targetPageBits
        case capabilityCount
        case capabilityLength
        case capabilityName(length: Int)
        case uuid
        case sectionHead(type: UInt8)
        case sectionHeadRest(type: UInt8, id: UInt32, nameLength: Int)
        case sectionID(type: UInt8)
        case memSize
        case blockNameLength
        case blockEntry(nameLength: Int)
        case record
        case recordNameLength
        case recordName(length: Int)
        case zeroFill
        case pageData
        case footer
        case footerID
        case commandHead
        case tail
        case failed

        var place: String {
            switch self {
            case .fileHeader: return "the file header"
            case .sectionType: return "a section type byte"
            case .configNameLength, .configName, .configNext, .subsectionNameLength, .subsectionRest, .targetPageBits,
                .capabilityCount, .capabilityLength, .capabilityName, .uuid:
                return "the configuration section"
            case .sectionHead, .sectionHeadRest, .sectionID: return "a section header"
            case .memSize, .blockNameLength, .blockEntry: return "the RAM block list"
            case .record: return "a RAM record header"
            case .recordNameLength, .recordName: return "a RAM record's block name"
            case .zeroFill: return "a ZERO page record"
            case .pageData: return "a page's data"
            case .footer, .footerID: return "a section footer"
            case .commandHead: return "a command"
            case .tail: return "the tail"
            case .failed: return "a refused stream"
            }
        }
    }

    private var contextRegion: Region {
        switch context {
        case .start: return .prologue
        case .part: return .live
        case .end: return .epilogue
        }
    }

    /// `n` contiguous bytes: in the input when they are all there, else
    /// gathered in the scratch buffer; nil when the chunk ended first.
    @inline(__always)
    private mutating func take(_ n: Int, _ base: UnsafeRawPointer, _ count: Int, _ i: inout Int) -> UnsafeRawPointer? {
        if scratchCount == 0 && count - i >= n {
            let p = base + i
            i += n
            return p
        }
        let m = min(n - scratchCount, count - i)
        (scratch + scratchCount).copyMemory(from: base + i, byteCount: m)
        scratchCount += m
        i += m
        if scratchCount < n { return nil }
        scratchCount = 0
        return UnsafeRawPointer(scratch)
    }

    /// Stream offset of a field of `n` bytes just taken.
    @inline(__always)
    private func offset(_ i: Int, _ n: Int) -> UInt64 { chunkBase + UInt64(i) - UInt64(n) }

    @inline(__always)
    private mutating func keep<S: MigrationStreamSink>(
        _ p: UnsafeRawPointer, _ n: Int, _ region: Region, _ base: UnsafeRawPointer, _ sink: inout S
    ) {
        if n == 0 { return }
        if p == UnsafeRawPointer(scratch) {
            flush(base, &sink)
            sink.verbatim(UnsafeRawBufferPointer(start: p, count: n), region: region)
            return
        }
        let start = p - base
        if pendingEnd > pendingStart && pendingEnd == start && pendingRegion == region {
            pendingEnd = start + n
            return
        }
        flush(base, &sink)
        pendingStart = start
        pendingEnd = start + n
        pendingRegion = region
    }

    @inline(__always)
    private mutating func flush<S: MigrationStreamSink>(_ base: UnsafeRawPointer, _ sink: inout S) {
        if pendingEnd > pendingStart {
            sink.verbatim(UnsafeRawBufferPointer(start: base + pendingStart, count: pendingEnd - pendingStart), region: pendingRegion)
        }
        pendingStart = 0
        pendingEnd = 0
    }

    private mutating func run<S: MigrationStreamSink>(
        _ base: UnsafeRawPointer, _ count: Int, _ i: inout Int, _ sink: inout S
    ) throws(MigrationStreamError) {
        while i < count {
            switch state {
            case .record:
                guard let p = take(8, base, count, &i) else { break }
                try record(be64(p), at: offset(i, 8), p, base, &sink)

            case .pageData:
                guard let p = take(pageSize, base, count, &i) else { break }
                flush(base, &sink)
                sink.page(block: recordBlock, offset: recordOffset, content: .data(UnsafeRawBufferPointer(start: p, count: pageSize)))
                state = .record

            case .zeroFill:
                guard let p = take(1, base, count, &i) else { break }
                let fill = p.load(as: UInt8.self)
                if fill != 0 { throw .nonZeroFill(fill, at: offset(i, 1)) }
                flush(base, &sink)
                sink.page(block: recordBlock, offset: recordOffset, content: .zero)
                state = .record

            case .recordNameLength:
                guard let p = take(1, base, count, &i) else { break }
                state = .recordName(length: Int(p.load(as: UInt8.self)))

            case .recordName(let length):
                guard let p = take(length, base, count, &i) else { break }
                let name = UnsafeRawBufferPointer(start: p, count: length)
                guard let index = names.firstIndex(where: { $0.elementsEqual(name) }) else {
                    throw .unknownBlock(name: String(decoding: name, as: UTF8.self), at: recordAt)
                }
                lastBlock = index
                try beginPage(block: index)

            case .tail:
                let n = count - i
                keep(base + i, n, .epilogue, base, &sink)
                tailBytes += UInt64(n)
                i = count

            case .fileHeader:
                guard let p = take(8, base, count, &i) else { break }
                let magic = be32(p)
                if magic != MigrationStream.magic { throw .badMagic(magic) }
                let version = be32(p + 4)
                if version != MigrationStream.version { throw .badVersion(version) }
                keep(p, 8, .prologue, base, &sink)
                state = .sectionType

            case .sectionType:
                guard let p = take(1, base, count, &i) else { break }
                try dispatch(p, at: offset(i, 1), base, &sink)

            case .configNameLength:
                guard let p = take(4, base, count, &i) else { break }
                let length = be32(p)
                if length > Self.maximumConfigurationName { throw .configurationNameTooLong(length, at: offset(i, 4)) }
                keep(p, 4, .prologue, base, &sink)
                state = length > 0 ? .configName(remaining: length) : .configNext

            case .configName(let remaining):
                let n = min(Int(remaining), count - i)
                keep(base + i, n, .prologue, base, &sink)
                i += n
                let left = remaining - UInt32(n)
                state = left > 0 ? .configName(remaining: left) : .configNext

            case .configNext:
                guard let p = take(1, base, count, &i) else { break }
                if p.load(as: UInt8.self) == SectionType.subsection {
                    keep(p, 1, .prologue, base, &sink)
                    state = .subsectionNameLength
                } else {
                    try dispatch(p, at: offset(i, 1), base, &sink)
                }

            case .subsectionNameLength:
                guard let p = take(1, base, count, &i) else { break }
                keep(p, 1, .prologue, base, &sink)
                state = .subsectionRest(nameLength: Int(p.load(as: UInt8.self)))

            case .subsectionRest(let nameLength):
                guard let p = take(nameLength + 4, base, count, &i) else { break }
                let name = String(decoding: UnsafeRawBufferPointer(start: p, count: nameLength), as: UTF8.self)
                switch name {
                case "configuration/target-page-bits": state = .targetPageBits
                case "configuration/capabilities": state = .capabilityCount
                case "configuration/uuid": state = .uuid
                default: throw .unknownConfigurationSubsection(name: name, at: offset(i, nameLength + 4))
                }
                keep(p, nameLength + 4, .prologue, base, &sink)

            case .targetPageBits:
                guard let p = take(4, base, count, &i) else { break }
                let bits = be32(p)
                let expected = UInt32(pageSize.trailingZeroBitCount)
                if bits != expected { throw .targetPageBits(bits, expected: expected, at: offset(i, 4)) }
                keep(p, 4, .prologue, base, &sink)
                state = .configNext

            case .capabilityCount:
                guard let p = take(4, base, count, &i) else { break }
                let n = be32(p)
                if n > Self.maximumCapabilities { throw .tooManyCapabilities(n, at: offset(i, 4)) }
                keep(p, 4, .prologue, base, &sink)
                capabilitiesLeft = n
                state = n == 0 ? .configNext : .capabilityLength

            case .capabilityLength:
                guard let p = take(1, base, count, &i) else { break }
                keep(p, 1, .prologue, base, &sink)
                state = .capabilityName(length: Int(p.load(as: UInt8.self)))

            case .capabilityName(let length):
                guard let p = take(length, base, count, &i) else { break }
                // QEMU lists only capabilities that change the stream
                // (mapped-ram, x-ignore-shared): none is supported.
                let name = String(decoding: UnsafeRawBufferPointer(start: p, count: length), as: UTF8.self)
                throw .unsupportedCapability(name: name, at: offset(i, length))

            case .uuid:
                guard let p = take(16, base, count, &i) else { break }
                keep(p, 16, .prologue, base, &sink)
                state = .configNext

            case .sectionHead(let type):
                guard let p = take(5, base, count, &i) else { break }
                keep(p, 5, phase == .beforeRAM || phase == .beforeConfiguration ? .prologue : .epilogue, base, &sink)
                state = .sectionHeadRest(type: type, id: be32(p), nameLength: Int((p + 4).load(as: UInt8.self)))

            case .sectionHeadRest(let type, let id, let nameLength):
                guard let p = take(nameLength + 8, base, count, &i) else { break }
                let at = offset(i, nameLength + 8 + 6)
                let name = UnsafeRawBufferPointer(start: p, count: nameLength)
                if type == SectionType.full {
                    throw .deviceSectionBeforeRAMEnd(name: String(decoding: name, as: UTF8.self), at: at)
                }
                guard name.elementsEqual(MigrationStream.ramIDString) else {
                    throw .iterableDeviceNotRAM(name: String(decoding: name, as: UTF8.self), at: at)
                }
                if ramSectionID != nil { throw .secondRAMStart(at: at) }
                let version = be32(p + nameLength + 4)
                if version != MigrationStream.ramVersion { throw .unsupportedRAMVersion(version, at: at) }
                keep(p, nameLength + 8, .prologue, base, &sink)
                ramSectionID = id
                phase = .beforeRAM
                context = .start
                state = .memSize

            case .sectionID(let type):
                guard let p = take(4, base, count, &i) else { break }
                let id = be32(p)
                if id != ramSectionID { throw .unknownSectionID(id, at: offset(i, 5)) }
                context = type == SectionType.part ? .part : .end
                keep(p, 4, contextRegion, base, &sink)
                state = .record

            case .memSize:
                guard let p = take(8, base, count, &i) else { break }
                let value = be64(p)
                let flags = value & flagMask
                if flags != Flag.memSize { throw .memSizeExpected(flags: flags, at: offset(i, 8)) }
                keep(p, 8, .prologue, base, &sink)
                memSizeTotal = value & ~flagMask
                blockSum = 0
                if memSizeTotal == 0 {
                    flush(base, &sink)
                    sink.blocks(blocks)
                    state = .record
                } else {
                    state = .blockNameLength
                }

            case .blockNameLength:
                guard let p = take(1, base, count, &i) else { break }
                let length = Int(p.load(as: UInt8.self))
                if length == 0 { throw .emptyBlockName(at: offset(i, 1)) }
                keep(p, 1, .prologue, base, &sink)
                state = .blockEntry(nameLength: length)

            case .blockEntry(let nameLength):
                guard let p = take(nameLength + 8, base, count, &i) else { break }
                let at = offset(i, nameLength + 9)
                let name = Array(UnsafeRawBufferPointer(start: p, count: nameLength))
                let length = be64(p + nameLength)
                if names.contains(name) { throw .duplicateBlock(name: String(decoding: name, as: UTF8.self), at: at) }
                if names.count >= Self.maximumBlocks { throw .tooManyBlocks(at: at) }
                if length > memSizeTotal - blockSum {
                    throw .blockListMismatch(total: memSizeTotal, sum: blockSum &+ length, at: at)
                }
                blockSum += length
                names.append(name)
                blocks.append(.init(name: String(decoding: name, as: UTF8.self), length: length))
                keep(p, nameLength + 8, .prologue, base, &sink)
                if blockSum == memSizeTotal {
                    flush(base, &sink)
                    sink.blocks(blocks)
                    state = .record
                } else {
                    state = .blockNameLength
                }

            case .footer:
                guard let p = take(1, base, count, &i) else { break }
                let byte = p.load(as: UInt8.self)
                if byte == SectionType.footer {
                    hasFooters = true
                    keep(p, 1, contextRegion, base, &sink)
                    state = .footerID
                } else if hasFooters == nil {
                    // The RAM START section had no footer: none has one.
                    hasFooters = false
                    endSection()
                    try dispatch(p, at: offset(i, 1), base, &sink)
                } else {
                    throw .missingFooter(found: byte, at: offset(i, 1))
                }

            case .footerID:
                guard let p = take(4, base, count, &i) else { break }
                let id = be32(p)
                if id != ramSectionID { throw .badFooter(expected: ramSectionID ?? 0, found: id, at: offset(i, 5)) }
                keep(p, 4, contextRegion, base, &sink)
                endSection()

            case .commandHead:
                guard let p = take(4, base, count, &i) else { break }
                let at = offset(i, 5)
                let command = be16(p)
                let length = be16(p + 2)
                guard command == MigrationStream.Command.switchoverStart else { throw .unsupportedCommand(command, at: at) }
                guard phase == .live else { throw .commandOutOfPlace(command, at: at) }
                guard length == 0 else { throw .commandLength(command: command, length: length, at: at) }
                keep(p, 4, .epilogue, base, &sink)
                phase = .switchedOver
                sawSwitchover = true
                state = .sectionType

            case .failed:
                throw failure ?? .truncated(in: "a refused stream", at: chunkBase)
            }
        }
    }

    /// A RAM record's be64 `offset | flags`.
    @inline(__always)
    private mutating func record<S: MigrationStreamSink>(
        _ value: UInt64, at: UInt64, _ p: UnsafeRawPointer, _ base: UnsafeRawPointer, _ sink: inout S
    ) throws(MigrationStreamError) {
        let flags = value & flagMask
        let offset = value & ~flagMask
        if flags == Flag.eos {
            if offset != 0 { throw .eosWithOffset(offset, at: at) }
            keep(p, 8, contextRegion, base, &sink)
            if hasFooters == false { endSection() } else { state = .footer }
            return
        }
        if flags & Flag.multifdFlush != 0 { throw .multifdFlush(at: at) }
        if flags & Flag.xbzrle != 0 { throw .xbzrle(at: at) }
        if flags & Flag.compressedPage != 0 { throw .compressedPage(at: at) }
        if flags & Flag.hook != 0 { throw .hook(at: at) }
        if flags & Flag.memSize != 0 { throw .memSizeOutsideStart(at: at) }
        let kind = flags & ~Flag.continue
        guard kind == Flag.zero || kind == Flag.page else { throw .unknownRAMFlags(flags, at: at) }
        if context == .start { throw .pageInStartSection(at: at) }
        recordFlags = flags
        recordOffset = offset
        recordAt = at
        if flags & Flag.continue != 0 {
            guard lastBlock >= 0 else { throw .continueWithoutBlock(at: at) }
            try beginPage(block: lastBlock)
        } else {
            state = .recordNameLength
        }
    }

    @inline(__always)
    private mutating func beginPage(block: Int) throws(MigrationStreamError) {
        let length = blocks[block].length
        if recordOffset >= length || length - recordOffset < UInt64(pageSize) {
            throw .pageBeyondBlock(block: blocks[block].name, offset: recordOffset, length: length, at: recordAt)
        }
        recordBlock = block
        state = recordFlags & Flag.zero != 0 ? .zeroFill : .pageData
    }

    /// After a RAM section's EOS and footer.
    private mutating func endSection() {
        switch context {
        case .start:
            phase = .live
            state = .sectionType
        case .part:
            state = .sectionType
        case .end:
            phase = .tail
            state = .tail
        }
    }

    /// A section type byte at `p`.
    private mutating func dispatch<S: MigrationStreamSink>(
        _ p: UnsafeRawPointer, at: UInt64, _ base: UnsafeRawPointer, _ sink: inout S
    ) throws(MigrationStreamError) {
        let type = p.load(as: UInt8.self)
        switch type {
        case SectionType.configuration:
            guard phase == .beforeConfiguration else { throw .unexpectedSection(type: type, at: at) }
            keep(p, 1, .prologue, base, &sink)
            phase = .beforeRAM
            state = .configNameLength
        case SectionType.full where phase == .live && sawPart:
            // A background snapshot: the device state QEMU saved at the
            // pause follows the pages directly; it is the tail.
            keep(p, 1, .epilogue, base, &sink)
            tailBytes += 1
            withoutRAMEnd = true
            phase = .tail
            state = .tail
        case SectionType.start, SectionType.full:
            keep(p, 1, phase == .beforeRAM || phase == .beforeConfiguration ? .prologue : .epilogue, base, &sink)
            state = .sectionHead(type: type)
        case SectionType.part:
            if phase == .switchedOver { throw .partAfterSwitchover(at: at) }
            guard phase == .live else { throw .unexpectedSection(type: type, at: at) }
            keep(p, 1, .live, base, &sink)
            sawLive = true
            sawPart = true
            state = .sectionID(type: type)
        case SectionType.end:
            guard phase == .live || phase == .switchedOver else { throw .unexpectedSection(type: type, at: at) }
            keep(p, 1, .epilogue, base, &sink)
            sawLive = true
            state = .sectionID(type: type)
        case SectionType.command:
            keep(p, 1, phase == .live || phase == .switchedOver ? .epilogue : .prologue, base, &sink)
            sawLive = sawLive || phase == .live
            state = .commandHead
        case SectionType.eof, SectionType.vmDescription, SectionType.subsection, SectionType.footer:
            throw .unexpectedSection(type: type, at: at)
        default:
            throw .unknownSectionType(type, at: at)
        }
    }
}

@inline(__always) func be16(_ p: UnsafeRawPointer) -> UInt16 { UInt16(bigEndian: p.loadUnaligned(as: UInt16.self)) }
@inline(__always) func be32(_ p: UnsafeRawPointer) -> UInt32 { UInt32(bigEndian: p.loadUnaligned(as: UInt32.self)) }
@inline(__always) func be64(_ p: UnsafeRawPointer) -> UInt64 { UInt64(bigEndian: p.loadUnaligned(as: UInt64.self)) }
