/// QEMU's pre-copy migration stream (QEMU 9–10, `migration/savevm.c`,
/// `migration/ram.c`, `scripts/analyze-migration.py`): the wire constants,
/// RAM blocks, page contents and the regions the parser files every
/// non-page byte under. The parser is `MigrationStreamParser`, the writer
/// `MigrationStreamWriter`; see README.md for the layout.
public enum MigrationStream {
    /// `QEMU_VM_FILE_MAGIC`: "QEVM".
    public static let magic: UInt32 = 0x5145_564d
    /// `QEMU_VM_FILE_VERSION`.
    public static let version: UInt32 = 3
    /// The only RAM section version QEMU's loader accepts (`ram_load`).
    public static let ramVersion: UInt32 = 4
    /// The RAM section's idstr.
    public static let ramIDString: [UInt8] = Array("ram".utf8)

    /// Section type bytes (`QEMU_VM_*`).
    public enum SectionType {
        public static let eof: UInt8 = 0x00
        public static let start: UInt8 = 0x01
        public static let part: UInt8 = 0x02
        public static let end: UInt8 = 0x03
        public static let full: UInt8 = 0x04
        public static let subsection: UInt8 = 0x05
        public static let vmDescription: UInt8 = 0x06
        public static let configuration: UInt8 = 0x07
        public static let command: UInt8 = 0x08
        public static let footer: UInt8 = 0x7e
    }

    /// RAM record flags, in the low bits of the be64 `offset | flags`
    /// (`RAM_SAVE_FLAG_*`; the mask is the target page size minus one).
    public enum Flag {
        public static let obsoleteFull: UInt64 = 0x001
        public static let zero: UInt64 = 0x002
        public static let memSize: UInt64 = 0x004
        public static let page: UInt64 = 0x008
        public static let eos: UInt64 = 0x010
        public static let `continue`: UInt64 = 0x020
        public static let xbzrle: UInt64 = 0x040
        public static let hook: UInt64 = 0x080
        public static let compressedPage: UInt64 = 0x100
        public static let multifdFlush: UInt64 = 0x200
    }

    /// Command numbers (`enum qemu_vm_cmd`); a command is `0x08`, be16
    /// command, be16 length, then the data.
    public enum Command {
        public static let openReturnPath: UInt16 = 1
        public static let ping: UInt16 = 2
        public static let postcopyAdvise: UInt16 = 3
        public static let postcopyListen: UInt16 = 4
        public static let postcopyRun: UInt16 = 5
        public static let postcopyRAMDiscard: UInt16 = 6
        public static let packaged: UInt16 = 7
        public static let enableCOLO: UInt16 = 8
        public static let postcopyResume: UInt16 = 9
        public static let receiveBitmap: UInt16 = 10
        /// Sent by QEMU 10 after the source stopped, before the END sections.
        public static let switchoverStart: UInt16 = 11
    }

    /// A RAM block announced by the RAM START section: its idstr and used length.
    public struct Block: Sendable, Hashable, CustomStringConvertible {
        public var name: String
        public var length: UInt64

        public init(name: String, length: UInt64) {
            self.name = name
            self.length = length
        }

        public var description: String { "\(name) (0x\(String(length, radix: 16)) bytes)" }
    }

    /// Where a non-page byte belongs when a stream is kept as prologue,
    /// pages and epilogue.
    public enum Region: Sendable, Hashable {
        /// The header, the configuration section and the RAM START section
        /// (block list, EOS, footer): kept, replayed first.
        case prologue
        /// The framing of RAM PART sections (header, EOS, footer): dropped
        /// on rebuild, where one PART section carries every page.
        case live
        /// The switch-over command, the RAM END section without its pages
        /// (header, EOS, footer) and the tail (device sections, EOF, the
        /// VM description): kept, replayed last.
        case epilogue
    }

    /// A page's content as the parser hands it to a sink: the data is
    /// borrowed (valid only during the call), `pageSize` bytes.
    public enum PageContent {
        case zero
        case data(UnsafeRawBufferPointer)
    }

    /// A page's content owned.
    public enum PageData: Sendable, Hashable {
        case zero
        case data([UInt8])

        public init(_ content: PageContent) {
            switch content {
            case .zero: self = .zero
            case .data(let bytes): self = .data(Array(bytes))
            }
        }
    }

    /// A page of a block: the block's index in the block list and its byte offset.
    public struct PageKey: Sendable, Hashable, Comparable {
        public var block: Int
        public var offset: UInt64

        public init(block: Int, offset: UInt64) {
            self.block = block
            self.offset = offset
        }

        public static func < (a: PageKey, b: PageKey) -> Bool {
            a.block != b.block ? a.block < b.block : a.offset < b.offset
        }
    }
}

/// What the parser reports, in stream order. Every byte of the stream is
/// either in a `verbatim` call or in a page record (its header, block name,
/// fill byte or data) reported by `page`.
public protocol MigrationStreamSink {
    /// Bytes that are not RAM page records, borrowed for the call.
    mutating func verbatim(_ bytes: UnsafeRawBufferPointer, region: MigrationStream.Region)
    /// The RAM block list, once, when the RAM START section's MEM_SIZE record is read.
    mutating func blocks(_ blocks: [MigrationStream.Block])
    /// One RAM page record; `block` indexes the block list.
    mutating func page(block: Int, offset: UInt64, content: MigrationStream.PageContent)
}
