/// Why a record cannot be used (or written).
public enum RecordError: Error, Sendable, Equatable, CustomStringConvertible {
    case notFound(String)
    case missingManifest(directory: String)
    case corruptManifest(path: String, reason: String)
    case unsupportedFormat(path: String, format: String, version: Int)
    case missingFile(path: String)
    case sizeMismatch(path: String, expected: Int64, actual: Int64)
    case checksumMismatch(path: String, expected: String, actual: String)
    case invalidFileName(String)
    case writeFailed(path: String, reason: String)
    /// A memory image (format v2) that cannot be written or read as asked.
    case badMemoryImage(reason: String)
    /// A retention request that cannot be carried out as asked.
    case badRetention(String)
    /// A disk record whose qcow2 backing chain names a file that is neither
    /// a record's disk nor the VM's base (`Record.verifyDiskChain`).
    case badDiskChain(path: String, reason: String)

    public var description: String {
        switch self {
        case .notFound(let id): return "no record '\(id)' (see `cevm records NAME`)"
        case .missingManifest(let directory):
            return "\(directory) has no manifest.json: it is not a checkpoint (an unfinished record is never one)"
        case .corruptManifest(let path, let reason): return "\(path) is corrupt: \(reason)"
        case .unsupportedFormat(let path, let format, let version):
            return "\(path) is \(format) format version \(version); this cevm reads \(RecordManifest.formatName) versions \(RecordManifest.readableVersions.lowerBound)–\(RecordManifest.readableVersions.upperBound)"
        case .missingFile(let path): return "record file \(path) is missing"
        case .sizeMismatch(let path, let expected, let actual):
            return "record file \(path) has \(actual) bytes, the manifest says \(expected)"
                + (actual < expected ? " (truncated)" : "")
        case .checksumMismatch(let path, let expected, let actual):
            return "record file \(path) fails its checksum: SHA-256 \(actual), the manifest says \(expected)"
        case .invalidFileName(let name): return "record manifest names a file '\(name)' outside its directory"
        case .writeFailed(let path, let reason): return "cannot write \(path): \(reason)"
        case .badMemoryImage(let reason): return "memory image: \(reason)"
        case .badRetention(let reason): return "retention: \(reason)"
        case .badDiskChain(let path, let reason): return "disk record \(path) \(reason)"
        }
    }
}
