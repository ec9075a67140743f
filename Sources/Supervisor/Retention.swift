import CEVMSystem
import Foundation
import QCOW2
import QEMU
import Records

/// Keeps a VM's newest records and removes the rest without breaking any
/// kept one. A record whose disk is incremental over a record that goes is
/// first made to stand on its own: the parent's clusters it lacks are copied
/// into its disk (which changes nothing it reads: those reads fell through to
/// the parent), its disk's backing becomes the parent's backing, and its
/// manifest is rewritten (parent, backing, size and checksum). Then the
/// parent goes: its manifest first (from then on it does not exist), then
/// its files.
///
/// Crash safety: a `merge.json` journal in the child's directory is written
/// before its disk is touched and removed after its new manifest is durable.
/// `recover` (run before every retention pass and before a restore) redoes
/// an interrupted merge: each step is idempotent, and the parent is only
/// removed after every child's journal is gone, so it is still there.
public enum Retention {
    static let journalName = "merge.json"

    struct Journal: Codable {
        var parent: String
        var parentDirectory: String
    }

    public struct Outcome: Sendable, Equatable {
        public var removed: [String] = []
        public var merged: [String] = []
    }

    /// Keeps the `keep` newest records of `store` (by id, which sorts by time).
    public static func apply(keep: Int, store: RecordStore) async throws -> Outcome {
        guard keep >= 1 else { throw SupervisorError.badSpec("--keep must be at least 1") }
        try await recover(store: store)
        var outcome = Outcome()
        let records = store.list().sorted { $0.id < $1.id }
        guard records.count > keep else { return outcome }
        for stale in records.prefix(records.count - keep) {
            // Reloaded: an earlier merge of this pass may have rewritten it.
            let old = try Record.load(directory: stale.directory)
            // Children: records whose disk is backed by this one's.
            let children = store.list().filter { $0.manifest.parent == old.id && $0.id != old.id }
            for child in children {
                try await merge(parent: old, into: child)
                outcome.merged.append(child.id)
            }
            remove(old)
            outcome.removed.append(old.id)
        }
        return outcome
    }

    /// Finishes merges a crash interrupted.
    public static func recover(store: RecordStore) async throws {
        guard let names = try? Files.list(store.directory) else { return }
        for name in names {
            let journalPath = "\(store.directory)/\(name)/\(journalName)"
            guard Files.exists(journalPath) else { continue }
            let journal: Journal
            do {
                journal = try JSONDecoder().decode(Journal.self, from: Data(try Files.read(journalPath, limit: 1 << 20)))
            } catch {
                throw RecordError.corruptManifest(path: journalPath, reason: "unreadable merge journal: \(error)")
            }
            // It names a record, by its id and its directory, nothing else.
            guard Record.isPlainID(journal.parent), journal.parentDirectory.split(separator: "/").last.map(String.init) == journal.parent else {
                throw RecordError.corruptManifest(
                    path: journalPath, reason: "the merge journal names no record ('\(journal.parent)' in '\(journal.parentDirectory)')")
            }
            let parent = try Record.load(directory: journal.parentDirectory)
            try await finishMerge(parent: parent, childDirectory: "\(store.directory)/\(name)")
        }
    }

    static func merge(parent: Record, into child: Record) async throws {
        guard child.manifest.disk != nil, parent.manifest.disk != nil else {
            // No disk chain between them: only the parent link goes.
            var manifest = child.manifest
            manifest.parent = parent.manifest.parent
            _ = try RecordStore.commit(manifest, in: child.directory)
            return
        }
        let journal = Journal(parent: parent.id, parentDirectory: parent.directory)
        try Files.writeAtomically(Array(try JSONEncoder().encode(journal)), to: "\(child.directory)/\(journalName)")
        try await finishMerge(parent: parent, childDirectory: child.directory)
    }

    /// The idempotent steps of one merge (the journal exists).
    static func finishMerge(parent: Record, childDirectory: String) async throws {
        guard let parentDisk = parent.manifest.disk, let parentDiskPath = parent.diskPath else {
            Files.remove("\(childDirectory)/\(journalName)")
            return
        }
        // The child's manifest may be stale (size, checksum) after a crash:
        // read it without load's size check.
        let manifestPath = "\(childDirectory)/\(Record.manifestName)"
        var manifest = try JSONDecoder().decode(RecordManifest.self, from: Data(try Files.read(manifestPath, limit: 16 << 20)))
        guard let childDisk = manifest.disk else { throw RecordError.corruptManifest(path: manifestPath, reason: "no disk to merge into") }
        let childDiskPath = "\(childDirectory)/\(childDisk.file)"
        // 1. The parent's clusters the child lacks, copied into the child.
        if childDisk.backing == parentDiskPath {
            try await Blocking.run {
                let top = try QCOW2Image.open(path: childDiskPath, writable: true)
                let below = try QCOW2Image.open(path: parentDiskPath, writable: false)
                // The parent's own layer (not its backing).
                _ = try top.absorb(clustersOf: below)
                try top.flush()
            }
            // 2. Its backing becomes the parent's backing (header only).
            try await Tool.check("qemu-img", ["rebase", "-u", "-f", "qcow2", "-b", parentDisk.backing, "-F", parentDisk.backingFormat, childDiskPath])
            try Files.fsync(path: childDiskPath)
        }
        // 3. The manifest says so.
        manifest.parent = parent.manifest.parent
        manifest.disk?.backing = parentDisk.backing
        manifest.disk?.backingFormat = parentDisk.backingFormat
        manifest.disk?.kind = parentDisk.kind
        if let index = manifest.files.firstIndex(where: { $0.name == childDisk.file }) {
            manifest.files[index].size = try Files.size(childDiskPath)
            manifest.files[index].sha256 = try await Blocking.run { try FileDigest.sha256(of: childDiskPath) }
        }
        _ = try RecordStore.commit(manifest, in: childDirectory)
        Files.remove("\(childDirectory)/\(journalName)")
        try Files.fsync(path: childDirectory)
    }

    /// Removes a record: the manifest first (the record stops existing), then the rest.
    static func remove(_ record: Record) {
        Files.remove("\(record.directory)/\(Record.manifestName)")
        try? Files.fsync(path: record.directory)
        try? FileManager.default.removeItem(atPath: record.directory)
    }
}
