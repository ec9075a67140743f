#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QCOW2
import VMStore

/// A file a record needs that lies outside the records tree: the bottom of
/// the VM's disk chain (its base image), the kernel and the initrd. The
/// manifest names each with a strong identity, so a restore finds it where
/// it was, can be pointed at a moved copy, and refuses a different file.
public struct ExternalFile: Codable, Sendable, Equatable {
    /// The identity cache's name in a VM's directory.
    public static let cacheName = "identities.json"

    public enum Role: String, Codable, Sendable, CaseIterable {
        case base, kernel, initrd
    }

    public var role: Role
    /// The path as the spec names it (absolute), or, in a standalone export,
    /// a plain name inside the record's directory.
    public var path: String
    public var size: Int64
    public var sha256: String

    public init(role: Role, path: String, size: Int64, sha256: String) {
        self.role = role
        self.path = path
        self.size = size
        self.sha256 = sha256
    }

    /// The file's path, a relative one resolved against the record's directory.
    public func resolved(in recordDirectory: String) -> String {
        path.hasPrefix("/") ? path : "\(recordDirectory)/\(path)"
    }
}

/// Why an external file cannot be used.
public enum ExternalFileError: Error, Sendable, Equatable, CustomStringConvertible {
    case missing(role: ExternalFile.Role, path: String)
    case differs(role: ExternalFile.Role, path: String, expectedSize: Int64, actualSize: Int64, expected: String, actual: String)

    public var description: String {
        switch self {
        case .missing(let role, let path):
            return "the record's \(role.rawValue) \(path) is missing: give --\(role.rawValue) PATH to a copy of it"
        case .differs(let role, let path, let expectedSize, let actualSize, let expected, let actual):
            return "\(path) is not the record's \(role.rawValue): \(actualSize) bytes, SHA-256 \(actual); the record needs \(expectedSize) bytes, SHA-256 \(expected)"
        }
    }
}

/// Size and SHA-256 of files, remembered per file so that a multi-GB base
/// image is hashed once, not at every checkpoint: an entry is reused while
/// the file's device, inode, size and modification time are those it was
/// hashed at. The cache is a small JSON file (the VM's `identities.json`);
/// a cache that cannot be read is ignored, one that cannot be written is
/// not an error. Blocking: call it off the cooperative pool.
public struct IdentityCache: Sendable {
    public let path: String?

    public init(path: String?) { self.path = path }

    struct Entry: Codable, Equatable {
        var path: String
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var mtimeNs: Int64
        var sha256: String
    }

    struct Stamp: Equatable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var mtimeNs: Int64
    }

    static func stamp(_ file: String) -> Stamp? {
        var info = stat()
        guard stat(file, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        return Stamp(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            mtimeNs: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec))
    }

    func load() -> [Entry] {
        guard let path, let bytes = try? Files.read(path, limit: 4 << 20) else { return [] }
        return (try? JSONDecoder().decode([Entry].self, from: Data(bytes))) ?? []
    }

    /// The identity of `file` (nil when it is missing or not a regular file).
    public func identity(of file: String) throws -> (size: Int64, sha256: String)? {
        guard let before = Self.stamp(file) else { return nil }
        var entries = load()
        if let hit = entries.first(where: { $0.path == file }),
            Stamp(device: hit.device, inode: hit.inode, size: hit.size, mtimeNs: hit.mtimeNs) == before
        {
            return (hit.size, hit.sha256)
        }
        let digest = try FileDigest.sha256(of: file)
        // A file that changed while it was hashed is not remembered.
        guard let after = Self.stamp(file), after == before else { return (before.size, digest) }
        if let path {
            entries.removeAll { $0.path == file || !Files.exists($0.path) }
            entries.append(
                Entry(path: file, device: after.device, inode: after.inode, size: after.size, mtimeNs: after.mtimeNs, sha256: digest))
            if let data = try? JSONEncoder().encode(entries) { try? Files.writeAtomically(Array(data), to: path) }
        }
        return (before.size, digest)
    }
}

extension ExternalFile {
    /// The files outside the records tree that a record of `spec` needs:
    /// the kernel and initrd of a direct kernel boot, and the bottom of the
    /// disk chain (followed from `spec.disk.base` through the qcow2 backing
    /// names: for a restored VM, through the record it was restored from).
    /// A file that is missing (or cannot be read) is left out: the
    /// checkpoint does not fail for it, and a restore cannot check it.
    public static func of(spec: VMSpec, cache: IdentityCache) -> [ExternalFile] {
        var paths: [(Role, String)] = []
        if case .kernel(let kernel, let initrd, _) = spec.boot {
            paths.append((.kernel, kernel))
            if let initrd { paths.append((.initrd, initrd)) }
        }
        if let disk = spec.disk { paths.append((.base, chainBottom(disk.base))) }
        return paths.compactMap { role, path in
            guard let identity = try? cache.identity(of: path) else { return nil }
            return ExternalFile(role: role, path: path, size: identity.size, sha256: identity.sha256)
        }
    }

    /// The last file of a qcow2 backing chain (the file itself when it is
    /// not a qcow2 with a backing file, e.g. a raw base).
    public static func chainBottom(_ path: String) -> String {
        var current = path
        for _ in 0..<128 {
            guard let image = try? QCOW2Image.open(path: current, writable: false, backing: .none),
                let name = image.header.backingFile
            else { return current }
            current = QCOW2Image.resolve(backingName: name, relativeTo: current)
        }
        return current
    }

    /// Checks the file at `path` (a moved copy, or where the manifest says)
    /// against this identity.
    public func check(at path: String, cache: IdentityCache) throws {
        guard let identity = try cache.identity(of: path) else { throw ExternalFileError.missing(role: role, path: path) }
        guard identity.size == size, identity.sha256 == sha256 else {
            throw ExternalFileError.differs(
                role: role, path: path, expectedSize: size, actualSize: identity.size, expected: sha256, actual: identity.sha256)
        }
    }
}

extension Record {
    /// Where each of the record's external files is, checked: the path the
    /// user gave for its role, else the recorded path (a relative one inside
    /// the record's directory). A missing file or a different one is an
    /// error naming the role, the path and both digests. Records made before
    /// external identities were kept have none to check.
    public func locateExternalFiles(overrides: [ExternalFile.Role: String], cache: IdentityCache) throws -> [ExternalFile.Role: String] {
        var found: [ExternalFile.Role: String] = [:]
        for file in manifest.external ?? [] {
            let path = overrides[file.role] ?? file.resolved(in: directory)
            try file.check(at: path, cache: cache)
            found[file.role] = path
        }
        return found
    }
}
