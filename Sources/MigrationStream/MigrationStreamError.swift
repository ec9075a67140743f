/// Why a stream (or a piece kept from one) was refused. Offsets (`at`) are
/// stream offsets of the field at fault; descriptions print them in hex.
public enum MigrationStreamError: Error, Sendable, Equatable, CustomStringConvertible {
    case badMagic(UInt32)
    case badVersion(UInt32)
    /// The stream ended (`finish()`) inside the named place.
    case truncated(in: String, at: UInt64)
    case unknownSectionType(UInt8, at: UInt64)
    /// A known section type where the stream may not have one (e.g. PART
    /// before the RAM START section, EOF before the RAM END section).
    case unexpectedSection(type: UInt8, at: UInt64)
    /// A FULL device section where the tail cannot begin (before any PART
    /// section, or after SWITCHOVER_START before the RAM END section): it
    /// carries no length, so nothing after it could be parsed. (Right
    /// after a PART section one begins a background snapshot's tail.)
    case deviceSectionBeforeRAMEnd(name: String, at: UInt64)
    /// A START section of an iterable device other than `ram`.
    case iterableDeviceNotRAM(name: String, at: UInt64)
    case secondRAMStart(at: UInt64)
    case unknownSectionID(UInt32, at: UInt64)
    case unsupportedRAMVersion(UInt32, at: UInt64)
    case badFooter(expected: UInt32, found: UInt32, at: UInt64)
    case missingFooter(found: UInt8, at: UInt64)
    case configurationNameTooLong(UInt32, at: UInt64)
    case unknownConfigurationSubsection(name: String, at: UInt64)
    /// A migration capability the configuration section names (QEMU sends
    /// only those that change the stream: mapped-ram, x-ignore-shared).
    case unsupportedCapability(name: String, at: UInt64)
    case tooManyCapabilities(UInt32, at: UInt64)
    case targetPageBits(UInt32, expected: UInt32, at: UInt64)
    case unsupportedCommand(UInt16, at: UInt64)
    case commandLength(command: UInt16, length: UInt16, at: UInt64)
    case commandOutOfPlace(UInt16, at: UInt64)
    case partAfterSwitchover(at: UInt64)
    case multifdFlush(at: UInt64)
    case xbzrle(at: UInt64)
    case compressedPage(at: UInt64)
    case hook(at: UInt64)
    case unknownRAMFlags(UInt64, at: UInt64)
    /// The RAM START section did not begin with a MEM_SIZE record.
    case memSizeExpected(flags: UInt64, at: UInt64)
    case memSizeOutsideStart(at: UInt64)
    /// The block lengths overran the MEM_SIZE total.
    case blockListMismatch(total: UInt64, sum: UInt64, at: UInt64)
    case emptyBlockName(at: UInt64)
    case duplicateBlock(name: String, at: UInt64)
    case tooManyBlocks(at: UInt64)
    case pageInStartSection(at: UInt64)
    case eosWithOffset(UInt64, at: UInt64)
    case unknownBlock(name: String, at: UInt64)
    case continueWithoutBlock(at: UInt64)
    case pageBeyondBlock(block: String, offset: UInt64, length: UInt64, at: UInt64)
    case nonZeroFill(UInt8, at: UInt64)
    /// Writer: a kept prologue that is not exactly "header … RAM START section".
    case prologueIncomplete(String)
    /// Writer: a kept epilogue that is not "commands, RAM END without pages, tail".
    case epilogueInvalid(String)
    /// Writer: a page that does not fit the block list or the page size.
    case invalidPage(block: Int, offset: UInt64)

    public var description: String {
        func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case .badMagic(let m): return "not a migration stream: magic \(hex(m)), expected 0x5145564d (QEVM)"
        case .badVersion(let v): return "migration stream version \(v), only 3 is supported"
        case .truncated(let place, let at): return "truncated in \(place) at \(hex(at))"
        case .unknownSectionType(let t, let at): return "unknown section type \(hex(t)) at \(hex(at))"
        case .unexpectedSection(let t, let at): return "section type \(hex(t)) out of place at \(hex(at))"
        case .deviceSectionBeforeRAMEnd(let name, let at):
            return "device section '\(name)' before the RAM END section at \(hex(at)) (device sections carry no length)"
        case .iterableDeviceNotRAM(let name, let at): return "iterable device '\(name)' other than ram at \(hex(at))"
        case .secondRAMStart(let at): return "second RAM START section at \(hex(at))"
        case .unknownSectionID(let id, let at): return "section id \(id) is not the RAM section's at \(hex(at))"
        case .unsupportedRAMVersion(let v, let at): return "RAM section version \(v) at \(hex(at)), only 4 is supported"
        case .badFooter(let e, let f, let at): return "section footer for section \(f), expected \(e), at \(hex(at))"
        case .missingFooter(let b, let at): return "byte \(hex(b)) where a section footer belongs at \(hex(at))"
        case .configurationNameTooLong(let n, let at): return "configuration machine name of \(n) bytes at \(hex(at))"
        case .unknownConfigurationSubsection(let name, let at): return "unknown configuration subsection '\(name)' at \(hex(at))"
        case .unsupportedCapability(let name, let at): return "unsupported migration capability '\(name)' at \(hex(at))"
        case .tooManyCapabilities(let n, let at): return "\(n) capabilities in the configuration at \(hex(at))"
        case .targetPageBits(let b, let e, let at): return "target page bits \(b), expected \(e), at \(hex(at))"
        case .unsupportedCommand(let c, let at):
            return "unsupported command \(c) at \(hex(at)) (only SWITCHOVER_START belongs in a plain pre-copy stream)"
        case .commandLength(let c, let l, let at): return "command \(c) with \(l) bytes of data at \(hex(at))"
        case .commandOutOfPlace(let c, let at): return "command \(c) out of place at \(hex(at))"
        case .partAfterSwitchover(let at): return "RAM PART section after the switch-over at \(hex(at))"
        case .multifdFlush(let at): return "multifd flush record at \(hex(at)) (multifd is not supported)"
        case .xbzrle(let at): return "xbzrle page at \(hex(at)) (xbzrle is not supported)"
        case .compressedPage(let at): return "compressed page at \(hex(at)) (compression is not supported)"
        case .hook(let at): return "RAM hook record at \(hex(at)) (RDMA is not supported)"
        case .unknownRAMFlags(let f, let at): return "RAM record flags \(hex(f)) at \(hex(at))"
        case .memSizeExpected(let f, let at): return "RAM START section without MEM_SIZE record (flags \(hex(f))) at \(hex(at))"
        case .memSizeOutsideStart(let at): return "MEM_SIZE record outside the RAM START section at \(hex(at))"
        case .blockListMismatch(let t, let s, let at): return "RAM block lengths sum to \(hex(s)), MEM_SIZE says \(hex(t)), at \(hex(at))"
        case .emptyBlockName(let at): return "RAM block with an empty name at \(hex(at))"
        case .duplicateBlock(let name, let at): return "RAM block '\(name)' announced twice at \(hex(at))"
        case .tooManyBlocks(let at): return "too many RAM blocks at \(hex(at))"
        case .pageInStartSection(let at): return "page record in the RAM START section at \(hex(at))"
        case .eosWithOffset(let o, let at): return "EOS record with offset \(hex(o)) at \(hex(at))"
        case .unknownBlock(let name, let at): return "page of RAM block '\(name)' not in the block list at \(hex(at))"
        case .continueWithoutBlock(let at): return "CONTINUE page record without a previous block at \(hex(at))"
        case .pageBeyondBlock(let b, let o, let l, let at):
            return "page at \(hex(o)) beyond block '\(b)' (length \(hex(l))) at \(hex(at))"
        case .nonZeroFill(let v, let at): return "ZERO page record with fill byte \(hex(v)) at \(hex(at))"
        case .prologueIncomplete(let why): return "kept prologue refused: \(why)"
        case .epilogueInvalid(let why): return "kept epilogue refused: \(why)"
        case .invalidPage(let b, let o): return "page of block \(b) at \(hex(o)) does not fit the block list"
        }
    }
}
