#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation

/// A group checkpoint's record: `$CEVM_HOME/groups/ID/` holds
/// `manifest.json` (this) and one channel-state file per network. The
/// members' records stay with their VMs; the manifest names each one.
/// The group exists once `manifest.json` is in `groups/ID/`: it is written
/// into a staging directory with the channel files, made durable, and the
/// directory renamed into place — only after every member record is
/// committed.
public struct GroupManifest: Codable, Sendable, Equatable {
    public static let formatName = "cevm-group"
    public static let currentVersion = 1

    public struct Member: Codable, Sendable, Equatable {
        public var vm: String
        public var record: String
        public var mechanism: Mechanism
        /// The member's own pause, and from the group's request to its record being durable.
        public var guestPauseMs: Double
        public var requestToDurableMs: Double
        /// The cevm networks the member was cut on.
        public var networks: [String]

        public init(vm: String, record: String, mechanism: Mechanism, guestPauseMs: Double, requestToDurableMs: Double, networks: [String]) {
            self.vm = vm
            self.record = record
            self.mechanism = mechanism
            self.guestPauseMs = guestPauseMs
            self.requestToDurableMs = requestToDurableMs
            self.networks = networks
        }
    }

    public struct Network: Codable, Sendable, Equatable {
        public var name: String
        /// The channel-state file, in the group's directory.
        public var file: String
        public var frames: Int
        public var bytes: Int64
        public var sha256: String
        /// Post-cut frames held for members that had not cut: in all, and at most at once.
        public var framesHeld: Int
        public var mostHeld: Int
        /// The longest a member had frames held for it (ms).
        public var longestHoldMs: Double?

        public init(
            name: String, file: String, frames: Int, bytes: Int64, sha256: String, framesHeld: Int, mostHeld: Int, longestHoldMs: Double? = nil
        ) {
            self.longestHoldMs = longestHoldMs
            self.name = name
            self.file = file
            self.frames = frames
            self.bytes = bytes
            self.sha256 = sha256
            self.framesHeld = framesHeld
            self.mostHeld = mostHeld
        }
    }

    public var format: String
    public var version: Int
    public var id: String
    public var createdAt: String
    public var members: [Member]
    public var networks: [Network]
    /// From the request to the group's commit.
    public var requestToCommitMs: Double

    public init(id: String, createdAt: String, members: [Member], networks: [Network], requestToCommitMs: Double) {
        format = Self.formatName
        version = Self.currentVersion
        self.id = id
        self.createdAt = createdAt
        self.members = members
        self.networks = networks
        self.requestToCommitMs = requestToCommitMs
    }

    public var largestPauseMs: Double { members.map(\.guestPauseMs).max() ?? 0 }
}

/// A committed group record.
public struct GroupRecord: Sendable {
    public let directory: String
    public let manifest: GroupManifest

    public var id: String { manifest.id }

    public func channelPath(_ network: GroupManifest.Network) -> String { "\(directory)/\(network.file)" }

    /// Reads `directory/manifest.json`, refusing what is not a group record.
    public static func load(directory: String) throws -> GroupRecord {
        let path = "\(directory)/manifest.json"
        guard Files.exists(path) else { throw RecordError.missingManifest(directory: directory) }
        let manifest: GroupManifest
        do { manifest = try JSONDecoder().decode(GroupManifest.self, from: Data(try Files.read(path, limit: 16 << 20))) } catch {
            throw RecordError.corruptManifest(path: path, reason: "\(error)")
        }
        guard manifest.format == GroupManifest.formatName else {
            throw RecordError.corruptManifest(path: path, reason: "format '\(manifest.format)' is not \(GroupManifest.formatName)")
        }
        guard manifest.version == GroupManifest.currentVersion else {
            throw RecordError.unsupportedFormat(path: path, format: manifest.format, version: manifest.version)
        }
        guard manifest.id == (directory as NSString).lastPathComponent else {
            throw RecordError.corruptManifest(path: path, reason: "its id \(manifest.id) is not its directory's name")
        }
        guard !manifest.members.isEmpty else { throw RecordError.corruptManifest(path: path, reason: "no members") }
        for network in manifest.networks where !Record.isPlainID(network.file) {
            throw RecordError.invalidFileName(network.file)
        }
        return GroupRecord(directory: directory, manifest: manifest)
    }

    /// Every channel-state file against its size and SHA-256.
    public func verify() throws {
        for network in manifest.networks {
            let path = channelPath(network)
            let size = (try? Files.size(path)) ?? -1
            if size < 0 { throw RecordError.missingFile(path: path) }
            if size != network.bytes { throw RecordError.sizeMismatch(path: path, expected: network.bytes, actual: size) }
            let digest = try FileDigest.sha256(of: path)
            if digest != network.sha256 { throw RecordError.checksumMismatch(path: path, expected: network.sha256, actual: digest) }
        }
    }
}

/// The group records of one `$CEVM_HOME`: `groups/ID/`.
public struct GroupStore: Sendable {
    public let directory: String

    public init(root: String) { directory = "\(root)/groups" }

    /// A new group id: `g` and a record-style id, so it is never a record's.
    public static func newID() -> String { "g" + RecordStore.newID() }

    public static func isGroupID(_ text: String) -> Bool { text.hasPrefix("g") && Record.isPlainID(text) }

    /// The lock file in a staging directory: held by the coordinator that
    /// writes it, so `removeUncommitted` (run by every group checkpoint as it
    /// starts) never takes the staging directory of one still running.
    public static let stagingLockName = ".lock"

    /// A fresh staging directory for group `id` (not a group until
    /// committed), and its lock, held until the group is committed or
    /// discarded (keep it alive until then).
    public func staging(id: String) throws -> (path: String, lock: FileLock) {
        try Files.makeDirectory(directory, mode: 0o700)
        let path = "\(directory)/.staging-\(id)"
        try Files.makeDirectory(path, mode: 0o700)
        // A concurrent removeUncommitted that took the directory before its
        // lock was held makes this throw: the group fails before it begins.
        guard let lock = try FileLock.tryAcquire("\(path)/\(Self.stagingLockName)") else {
            throw SystemError("flock", errno: EWOULDBLOCK, subject: "\(path)/\(Self.stagingLockName)")
        }
        return (path, lock)
    }

    /// Writes the manifest into `staging` and renames it into place: the
    /// commit point. The channel files must already be durable there.
    public func commit(_ manifest: GroupManifest, staging: String) throws -> GroupRecord {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try Files.writeAtomically(Array(try encoder.encode(manifest)), to: "\(staging)/manifest.json")
        let final = "\(directory)/\(manifest.id)"
        if rename(staging, final) != 0 { throw SystemError("rename", errno: errno, subject: "\(staging) -> \(final)") }
        try Files.fsync(path: directory)
        // Committed: the lock has no more use (a crash here leaves the file, which nothing reads).
        unlink("\(final)/\(Self.stagingLockName)")
        return GroupRecord(directory: final, manifest: manifest)
    }

    /// Removes a staging directory a failed group checkpoint left.
    public func discard(staging: String) {
        try? FileManager.default.removeItem(atPath: staging)
    }

    /// Committed group records, oldest first; anything else is skipped.
    public func list() -> [GroupRecord] {
        guard let names = try? Files.list(directory) else { return [] }
        return names.filter { !$0.hasPrefix(".") }.sorted().compactMap { try? GroupRecord.load(directory: "\(directory)/\($0)") }
    }

    public func load(id: String) throws -> GroupRecord {
        guard Self.isGroupID(id) else { throw RecordError.notFound(id) }
        let path = "\(directory)/\(id)"
        guard Files.isDirectory(path) else { throw RecordError.notFound(id) }
        return try GroupRecord.load(directory: path)
    }

    /// Keeps the `keep` newest group records whose members were cut on
    /// `network` and removes the older ones (renamed out of the way first,
    /// so a group is whole or gone). Members' records stay: a member's own
    /// retention may take them once no group names them. Returns the ids removed.
    public func retain(keep: Int, network: String) throws -> [String] {
        guard keep >= 1 else { throw RecordError.badRetention("--keep must be at least 1") }
        let ofNetwork = list().filter { $0.manifest.networks.contains { $0.name == network } }.map(\.id).sorted()
        guard ofNetwork.count > keep else { return [] }
        var removed: [String] = []
        for id in ofNetwork.prefix(ofNetwork.count - keep) {
            let going = "\(directory)/.removing-\(id)"
            if rename("\(directory)/\(id)", going) != 0 { throw SystemError("rename", errno: errno, subject: "\(directory)/\(id)") }
            try? Files.fsync(path: directory)
            try? FileManager.default.removeItem(atPath: going)
            removed.append(id)
        }
        return removed
    }

    /// Staging directories of group checkpoints that never committed (whose
    /// coordinator is gone: a running one holds its staging directory's
    /// lock), and group records half removed.
    public func removeUncommitted() {
        for name in (try? Files.list(directory)) ?? [] where name.hasPrefix(".staging-") || name.hasPrefix(".removing-") {
            let path = "\(directory)/\(name)"
            if name.hasPrefix(".staging-") && FileLock.isHeld("\(path)/\(Self.stagingLockName)") { continue }
            try? FileManager.default.removeItem(atPath: path)
        }
    }
}
