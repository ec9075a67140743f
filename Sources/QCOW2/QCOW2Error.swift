#if canImport(Glibc)
import Glibc
#endif
/// Everything the qcow2 engine can refuse or fail at. Each case keeps the raw
/// payload (the field, the value read, the file offset) so a caller can act
/// on it; `description` prints offsets in hex.
public enum QCOW2Error: Error, Sendable, Equatable, CustomStringConvertible {
    /// The first four bytes are not "QFI\xfb".
    case badMagic(found: UInt32)
    /// A header field holds a value the engine does not accept.
    case invalidField(field: String, value: UInt64, offset: UInt64, reason: String)
    /// Incompatible feature bits the engine does not implement.
    case unsupportedIncompatibleFeatures(bits: UInt64, offset: UInt64)
    /// The file ends before a structure it declares.
    case truncated(what: String, offset: UInt64, length: UInt64, fileSize: UInt64)
    /// Two metadata structures share bytes.
    case overlap(first: String, second: String, offset: UInt64)
    /// A header extension is malformed.
    case invalidExtension(type: UInt32, offset: UInt64, reason: String)
    /// An L1, L2, refcount-table or refcount-block entry is malformed.
    case invalidTableEntry(table: String, index: UInt64, entry: UInt64, offset: UInt64, reason: String)
    /// A compressed cluster was met; the engine does not decompress.
    case compressedCluster(guestOffset: UInt64, entry: UInt64)
    /// A refcount would exceed the maximum its width can hold.
    case refcountOverflow(hostOffset: UInt64)
    /// A guest request outside the virtual disk.
    case outOfBounds(offset: UInt64, count: UInt64, virtualSize: UInt64)
    /// A write-side call on an image opened read-only, or on one that cannot
    /// be written safely (dirty, corrupt, internal snapshots).
    case readOnly(path: String, reason: String)
    /// The backing chain is longer than the limit or loops.
    case backingChainTooDeep(path: String, limit: Int)
    /// A backing format other than qcow2 or raw.
    case unsupportedBackingFormat(format: String, path: String)
    /// The host file would grow beyond what an L2 entry can address.
    case imageTooLarge(hostOffset: UInt64)
    /// A system call failed.
    case io(call: String, errno: Int32, path: String, offset: UInt64)
    /// Creation parameters that cannot produce a valid image.
    case invalidCreateOption(option: String, value: UInt64, reason: String)

    public var description: String {
        switch self {
        case .badMagic(let found):
            return "not a qcow2 image: magic is \(hex(UInt64(found))) at offset 0x0, expected 0x514649fb"
        case .invalidField(let field, let value, let offset, let reason):
            return "qcow2 header field \(field) at offset \(hex(offset)) is \(hex(value)) (\(value)): \(reason)"
        case .unsupportedIncompatibleFeatures(let bits, let offset):
            return "qcow2 incompatible_features at offset \(hex(offset)) has unsupported bits \(hex(bits))"
        case .truncated(let what, let offset, let length, let fileSize):
            return "\(what) at offset \(hex(offset)) (\(hex(length)) bytes) extends past the end of the file (size \(hex(fileSize)))"
        case .overlap(let first, let second, let offset):
            return "\(first) overlaps \(second) at offset \(hex(offset))"
        case .invalidExtension(let type, let offset, let reason):
            return "qcow2 header extension \(hex(UInt64(type))) at offset \(hex(offset)): \(reason)"
        case .invalidTableEntry(let table, let index, let entry, let offset, let reason):
            return "\(table) entry \(index) at offset \(hex(offset)) is \(hex(entry)): \(reason)"
        case .compressedCluster(let guestOffset, let entry):
            return "guest offset \(hex(guestOffset)) is a compressed cluster (L2 entry \(hex(entry))); compressed clusters are not supported"
        case .refcountOverflow(let hostOffset):
            return "refcount of the cluster at host offset \(hex(hostOffset)) would overflow"
        case .outOfBounds(let offset, let count, let virtualSize):
            return "request at \(hex(offset)) of \(count) bytes is outside the virtual disk (\(hex(virtualSize)) bytes)"
        case .readOnly(let path, let reason):
            return "\(path) cannot be written: \(reason)"
        case .backingChainTooDeep(let path, let limit):
            return "backing chain of \(path) is deeper than \(limit) layers (or loops)"
        case .unsupportedBackingFormat(let format, let path):
            return "backing file \(path) has format '\(format)'; only qcow2 and raw are supported"
        case .imageTooLarge(let hostOffset):
            return "host offset \(hex(hostOffset)) cannot be addressed by a qcow2 L2 entry"
        case .io(let call, let errno, let path, let offset):
            let reason = strerror(errno).map { String(cString: $0) } ?? "errno \(errno)"
            if call == "open" || call == "fstat" { return "\(call) \(path): \(reason)" }
            return "\(call) on \(path) at offset \(hex(offset)) failed: \(reason)"
        case .invalidCreateOption(let option, let value, let reason):
            return "cannot create image: \(option) = \(value): \(reason)"
        }
    }
}

@inline(__always)
func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
