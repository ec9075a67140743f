#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Crypto
import Foundation
import VMStore

/// One committed record: a directory with a valid manifest.
public struct Record: Sendable {
    public let directory: String
    public let manifest: RecordManifest

    public var id: String { manifest.id }
    public func path(of entry: RecordManifest.FileEntry) -> String { "\(directory)/\(entry.name)" }
    public var diskPath: String? { manifest.disk.map { "\(directory)/\($0.file)" } }
    /// The disk's backing file as a path (a relative name resolved against
    /// this record's directory).
    public var diskBackingPath: String? { manifest.disk.map { $0.backingPath(in: directory) } }
    /// Version 1: the raw stream (version 2 has `memory` instead).
    public var memoryPath: String? { manifest.memory == nil ? manifest.file(.memory).map(path(of:)) : nil }

    public static let manifestName = "manifest.json"

    /// Reads and validates the manifest of `directory` and checks that every
    /// file it lists is there with its recorded size (not its checksum: see
    /// `verify`).
    public static func load(directory: String) throws -> Record {
        let path = "\(directory)/\(manifestName)"
        guard Files.exists(path) else { throw RecordError.missingManifest(directory: directory) }
        let bytes: [UInt8]
        do { bytes = try Files.read(path, limit: 16 << 20) } catch {
            throw RecordError.corruptManifest(path: path, reason: "\(error)")
        }
        // The format and version first, so a newer record is named as such
        // rather than reported as garbage.
        struct Header: Decodable {
            var format: String
            var formatVersion: Int
        }
        guard let header = try? JSONDecoder().decode(Header.self, from: Data(bytes)) else {
            throw RecordError.corruptManifest(path: path, reason: "not a cevm record manifest (no format and formatVersion)")
        }
        guard header.format == RecordManifest.formatName, RecordManifest.readableVersions.contains(header.formatVersion) else {
            throw RecordError.unsupportedFormat(path: path, format: header.format, version: header.formatVersion)
        }
        let manifest: RecordManifest
        do { manifest = try JSONDecoder().decode(RecordManifest.self, from: Data(bytes)) } catch {
            throw RecordError.corruptManifest(path: path, reason: "\(error)")
        }
        for entry in manifest.files {
            guard isPlainName(entry.name) else { throw RecordError.invalidFileName(entry.name) }
            let file = "\(directory)/\(entry.name)"
            guard Files.exists(file) else { throw RecordError.missingFile(path: file) }
            let size = try Files.size(file)
            if size != entry.size { throw RecordError.sizeMismatch(path: file, expected: entry.size, actual: size) }
        }
        if let disk = manifest.disk, !manifest.files.contains(where: { $0.name == disk.file && $0.role == .disk }) {
            throw RecordError.corruptManifest(path: path, reason: "the disk file \(disk.file) is not among the listed files")
        }
        guard manifest.file(.memory) != nil else {
            throw RecordError.corruptManifest(path: path, reason: "no memory file is listed")
        }
        guard Record.isPlainID(manifest.id) else {
            throw RecordError.corruptManifest(path: path, reason: "its id '\(manifest.id)' is not a plain name")
        }
        if let parent = manifest.parent, !Record.isPlainID(parent) {
            throw RecordError.corruptManifest(path: path, reason: "its parent '\(parent)' is not a plain record id")
        }
        for file in manifest.external ?? [] where !file.path.hasPrefix("/") && !isPlainName(file.path) {
            throw RecordError.corruptManifest(path: path, reason: "its \(file.role.rawValue) '\(file.path)' is neither absolute nor a plain name")
        }
        switch (manifest.formatVersion, manifest.memory) {
        case (1, nil): break
        case (1, .some): throw RecordError.corruptManifest(path: path, reason: "a version 1 record with a version 2 memory description")
        case (_, nil): throw RecordError.corruptManifest(path: path, reason: "a version \(manifest.formatVersion) record without its memory description")
        case (_, .some(let memory)):
            do { try memory.layout.validate() } catch { throw RecordError.corruptManifest(path: path, reason: "\(error)") }
            for name in memory.fileNames where !manifest.files.contains(where: { $0.name == name && $0.role == .memory }) {
                throw RecordError.corruptManifest(path: path, reason: "the memory file \(name) is not among the listed files")
            }
            for entry in manifest.files where entry.name == memory.digests && entry.sha256 == nil {
                throw RecordError.corruptManifest(path: path, reason: "the page digest file \(entry.name) has no SHA-256")
            }
            if let parent = memory.parent, !Record.isPlainID(parent) {
                throw RecordError.corruptManifest(path: path, reason: "its memory's parent '\(parent)' is not a plain record id")
            }
            if (memory.kind == .incremental) != (memory.parent != nil) {
                throw RecordError.corruptManifest(path: path, reason: "an incremental memory names its parent, a full one does not")
            }
        }
        for entry in manifest.files where entry.sha256 == nil && entry.name != manifest.memory?.image {
            throw RecordError.corruptManifest(path: path, reason: "the file \(entry.name) has no SHA-256 (only a page image may go without)")
        }
        return Record(directory: directory, manifest: manifest)
    }

    /// Checks every file's SHA-256 (or only those of `role`) against the
    /// manifest (a version 2 page image has none: `verifyRestorable` checks
    /// its pages).
    public func verify(role: RecordManifest.FileEntry.Role? = nil) throws {
        for entry in manifest.files where role == nil || entry.role == role {
            guard let expected = entry.sha256 else { continue }
            let file = path(of: entry)
            let digest = try FileDigest.sha256(of: file)
            if digest != expected { throw RecordError.checksumMismatch(path: file, expected: expected, actual: digest) }
        }
    }

    /// A record id names a directory: no path separators, no dot files.
    public static func isPlainID(_ id: String) -> Bool { isPlainName(id) }

    static func isPlainName(_ name: String) -> Bool {
        !name.isEmpty && !name.contains("/") && name != "." && name != ".." && !name.hasPrefix(".")
    }
}

/// The records of one VM: `$CEVM_HOME/vms/NAME/records/ID/`.
public struct RecordStore: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public init(paths: VMPaths) { self.directory = "\(paths.directory)/records" }

    /// A new record id: UTC time and a random suffix ("20261122-210512-3fa1").
    public static func newID() -> String {
        let stamp = Timestamp.now()  // 2026-11-22T21:05:12.123456Z
        let digits = stamp.prefix(19).filter { $0.isNumber }
        let date = digits.prefix(8)
        let time = digits.dropFirst(8).prefix(6)
        let suffix = String(UInt16.random(in: 0...UInt16.max), radix: 16)
        return "\(date)-\(time)-\(String(repeating: "0", count: 4 - suffix.count))\(suffix)"
    }

    /// Committed records, oldest first. Directories without a valid
    /// manifest are not records and are skipped.
    public func list() -> [Record] {
        guard let names = try? Files.list(directory) else { return [] }
        return names.compactMap { try? Record.load(directory: "\(directory)/\($0)") }
            .sorted { $0.manifest.createdAt < $1.manifest.createdAt }
    }

    /// Why each directory that is not a record is not one.
    public func rejects() -> [(String, any Error)] {
        guard let names = try? Files.list(directory) else { return [] }
        return names.compactMap { name in
            do {
                _ = try Record.load(directory: "\(directory)/\(name)")
                return nil
            } catch { return (name, error) }
        }
    }

    public func newRecordDirectory(id: String) throws -> String {
        try Files.makeDirectory(directory, mode: 0o700)
        let path = "\(directory)/\(id)"
        if mkdir(path, 0o700) != 0 { throw SystemError("mkdir", errno: errno, subject: path) }
        return path
    }

    /// Commits a record: its files must already be durable. Writes the
    /// manifest under a temporary name, fsyncs it, renames it into place and
    /// fsyncs the directory. Until the rename the record does not exist.
    public static func commit(_ manifest: RecordManifest, in recordDirectory: String) throws -> Record {
        let encoder = StoreCoding.encoder()
        var data = try encoder.encode(manifest)
        data.append(0x0a)
        do {
            try Files.writeAtomically(data, to: "\(recordDirectory)/\(Record.manifestName)", mode: 0o600)
            try Files.fsync(path: Files.parent(of: recordDirectory))
        } catch {
            throw RecordError.writeFailed(path: "\(recordDirectory)/\(Record.manifestName)", reason: "\(error)")
        }
        return try Record.load(directory: recordDirectory)
    }

    /// Removes an uncommitted record directory (never one with a manifest).
    public static func discard(_ recordDirectory: String) {
        guard !Files.exists("\(recordDirectory)/\(Record.manifestName)") else { return }
        try? FileManager.default.removeItem(atPath: recordDirectory)
    }

    /// Removes directories left by checkpoints that never committed.
    public func removeUncommitted() {
        for (name, error) in rejects() {
            if case RecordError.missingManifest = error { Self.discard("\(directory)/\(name)") }
        }
    }
}

/// SHA-256 of files and streams.
public enum FileDigest {
    public static func sha256(of path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw RecordError.missingFile(path: path) }
        defer { close(fd) }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try Files.readSome(fd, into: &buffer, subject: path)
            if n == 0 { break }
            buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        return hex(hasher.finalize())
    }

    public static func hex(_ digest: SHA256.Digest) -> String {
        digest.map { byte in
            let text = String(byte, radix: 16)
            return byte < 16 ? "0" + text : text
        }.joined()
    }
}

/// A file being written from a stream: appends, hashes, counts, fsyncs;
/// or, as `.scratch`, a file kept only to be read back once (by a
/// `FollowingPageRecorder`'s parser) and
/// removed.
public final class StreamSpool {
    /// When the file's SHA-256 is computed: as the bytes are written, or by
    /// `finish` from the file itself. A tee takes the second: hashing then
    /// costs the stream nothing while it flows (on two CPUs the tee's share
    /// of the pre-copy CPU bounds the migration's bandwidth) and happens on
    /// the old side's CPU after the switch-over instead. `scratch`: never,
    /// nor fsynced: the file is part of no record (a stream spooled to be
    /// parsed beside it), and `finish` refuses it.
    public enum Hashing: Sendable {
        case whileWriting
        case atFinish
        case scratch
    }

    public let path: String
    private let fd: Int32
    private let hashing: Hashing
    private var hasher = SHA256()
    public private(set) var bytes: Int64 = 0

    /// Creates the file (it must not exist).
    public init(path: String, hashing: Hashing = .whileWriting) throws {
        self.path = path
        self.hashing = hashing
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd < 0 { throw RecordError.writeFailed(path: path, reason: String(cString: strerror(errno))) }
    }

    deinit { close(fd) }

    public func write(_ chunk: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < chunk.count {
            let n = Glibc.write(fd, chunk.baseAddress.map { $0 + offset }, chunk.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw RecordError.writeFailed(path: path, reason: String(cString: strerror(errno)))
            }
            offset += n
        }
        if hashing == .whileWriting { hasher.update(bufferPointer: chunk) }
        bytes += Int64(chunk.count)
    }

    /// Appends `count` bytes a pipe holds, moved into the file by the kernel
    /// (splice(2)): not for `.whileWriting`, since the bytes never pass
    /// through this process to be hashed.
    public func append(fromPipe pipe: Int32, count: Int) throws {
        guard hashing != .whileWriting else {
            throw RecordError.writeFailed(path: path, reason: "a spool hashed while writing cannot take bytes it does not see")
        }
        do { try Splice.moveAll(from: pipe, to: fd, count: count, subject: path) } catch let error as SystemError {
            throw RecordError.writeFailed(path: path, reason: String(cString: strerror(error.errno)))
        }
        bytes += Int64(count)
    }

    /// Removes the file (a `.scratch` spool once parsed).
    public func remove() { unlink(path) }

    /// fsync(2), then the file's entry for the manifest. With `.atFinish`,
    /// write-back of the whole file is started first (sync_file_range(2)),
    /// so the disk writes while the file is read back and hashed. A
    /// `.scratch` spool has no entry: refused.
    public func finish(role: RecordManifest.FileEntry.Role) throws -> RecordManifest.FileEntry {
        let digest: String
        switch hashing {
        case .whileWriting:
            digest = FileDigest.hex(hasher.finalize())
        case .atFinish:
            Files.startWriteback(fd)
            digest = try FileDigest.sha256(of: path)
        case .scratch:
            throw RecordError.writeFailed(path: path, reason: "a scratch spool is part of no record")
        }
        if fsync(fd) != 0 { throw RecordError.writeFailed(path: path, reason: String(cString: strerror(errno))) }
        let name = path.split(separator: "/").last.map(String.init) ?? path
        return .init(name: name, role: role, size: bytes, sha256: digest)
    }
}
