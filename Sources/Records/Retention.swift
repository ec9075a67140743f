#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QCOW2

/// Keeps a VM's newest records and removes the rest without breaking any
/// kept one. A record whose disk or memory is incremental over a record
/// that goes is first made to stand without it, chain by chain (the disk
/// chain and the memory chain are independent: a record may build on its
/// parent in one and not the other):
///
/// - the parent's clusters it lacks are copied into its image (which
///   changes nothing it reads: those reads fell through to the parent; a
///   zero cluster stays a zero cluster, and its own clusters are untouched);
/// - its image's backing becomes the parent's backing, in the header
///   (`QCOW2Image.setBacking`): the grandparent named relatively
///   ("../GRANDPARENT/disk.qcow2", "../GRANDPARENT/memory.qcow2"), the
///   VM's base image for a disk, or none when the parent was full;
/// - its manifest is rewritten: `parent` and `disk` (backing, format,
///   kind) for the disk; `memory.parent`, `memory.kind` and the page counts
///   (recounted from the image) for the memory; the size and SHA-256 of
///   each rewritten file. The digest file does not change: the chain
///   restores the same pages.
///
/// Then the parent goes: its manifest first (from then on it does not
/// exist), then its files.
///
/// Crash safety: a `merge.json` journal in the child's directory is written
/// before any of its files is touched and removed after its new manifest
/// is durable. `recover` (run before every retention pass, when a
/// supervisor starts and before a restore) redoes an interrupted merge:
/// every step is idempotent and decided from the files themselves (an image
/// whose header still names the parent is absorbed and rebased again; one
/// that names the parent's backing already was), and the parent is only
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

    /// The steps of a merge, in order (a test stops after any of them).
    enum Step: Int, CaseIterable, Sendable {
        case journalWritten, diskAbsorbed, diskRebased, memoryAbsorbed, memoryRebased, manifestCommitted, journalRemoved
        case parentManifestRemoved
    }

    /// Thrown by the test hook in place of a crash.
    struct Stopped: Error {
        let after: Step
    }

    /// Keeps the `keep` newest records of `store` (by id, which sorts by
    /// time), and every record in `protected` (those a group record names:
    /// removing one would break the group; a protected record may still be
    /// rewritten to stand without a parent that goes, which restores the
    /// same state).
    public static func apply(keep: Int, store: RecordStore, protected: Set<String> = []) async throws -> Outcome {
        try await apply(keep: keep, store: store, protected: protected, stopAfter: nil)
    }

    static func apply(keep: Int, store: RecordStore, protected: Set<String> = [], stopAfter: Step?) async throws -> Outcome {
        guard keep >= 1 else { throw RecordError.badRetention("--keep must be at least 1") }
        try await recover(store: store)
        var outcome = Outcome()
        let records = store.list().sorted { $0.id < $1.id }
        guard records.count > keep else { return outcome }
        for stale in records.prefix(records.count - keep) where !protected.contains(stale.id) {
            // Reloaded: an earlier merge of this pass may have rewritten it.
            let old = try Record.load(directory: stale.directory)
            // Children: records whose disk or memory builds on this one.
            let children = store.list().filter {
                $0.id != old.id && ($0.manifest.parent == old.id || $0.manifest.memory?.parent == old.id)
            }
            for child in children {
                try await merge(parent: old, into: child, stopAfter: stopAfter)
                outcome.merged.append(child.id)
            }
            try remove(old, stopAfter: stopAfter)
            outcome.removed.append(old.id)
        }
        return outcome
    }

    /// Finishes merges a crash interrupted.
    public static func recover(store: RecordStore) async throws {
        guard let names = try? Files.list(store.directory) else { return }
        for name in names.sorted() {
            let childDirectory = "\(store.directory)/\(name)"
            let journalPath = "\(childDirectory)/\(journalName)"
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
            // The parent is the child's sibling; the directory the journal
            // names is only used if the tree was not moved since.
            let sibling = "\(store.directory)/\(journal.parent)"
            let parentDirectory = Files.isDirectory(sibling) ? sibling : journal.parentDirectory
            let parent = try Record.load(directory: parentDirectory)
            try await finishMerge(parent: parent, childDirectory: childDirectory, stopAfter: nil)
        }
    }

    static func merge(parent: Record, into child: Record, stopAfter: Step?) async throws {
        let journal = Journal(parent: parent.id, parentDirectory: parent.directory)
        try Files.writeAtomically(Array(try JSONEncoder().encode(journal)), to: "\(child.directory)/\(journalName)")
        try Files.fsync(path: child.directory)
        try stop(after: .journalWritten, stopAfter)
        try await finishMerge(parent: parent, childDirectory: child.directory, stopAfter: stopAfter)
    }

    static func stop(after step: Step, _ stopAfter: Step?) throws {
        if step == stopAfter { throw Stopped(after: step) }
    }

    /// The idempotent steps of one merge (the journal exists).
    static func finishMerge(parent: Record, childDirectory: String, stopAfter: Step?) async throws {
        // The child's manifest may be stale (size, checksum) after a crash:
        // read it without load's size check.
        let manifestPath = "\(childDirectory)/\(Record.manifestName)"
        let original: RecordManifest
        do {
            original = try JSONDecoder().decode(RecordManifest.self, from: Data(try Files.read(manifestPath, limit: 16 << 20)))
        } catch {
            throw RecordError.corruptManifest(path: manifestPath, reason: "\(error)")
        }
        var manifest = original
        var rewritten: [String] = []

        // The disk chain.
        if original.parent == parent.id {
            manifest.parent = parent.manifest.parent
            if let childDisk = original.disk, let parentDisk = parent.manifest.disk, let parentDiskPath = parent.diskPath {
                let childDiskPath = "\(childDirectory)/\(childDisk.file)"
                // The parent's backing as its header names it (its manifest
                // says the same for records with relative names).
                let parentHeader = try QCOW2Image.open(path: parentDiskPath, writable: false, backing: .none).header
                let target = parentHeader.backingFile.map { ($0, parentHeader.backingFormat ?? parentDisk.backingFormat) }
                try await absorbAndRebase(
                    image: childDiskPath, parentImage: parentDiskPath, target: target, stopAfter: stopAfter,
                    steps: (.diskAbsorbed, .diskRebased))
                manifest.disk?.backing = target?.0 ?? parentDisk.backing
                manifest.disk?.backingFormat = target?.1 ?? parentDisk.backingFormat
                manifest.disk?.kind = parentDisk.kind
                rewritten.append(childDisk.file)
            }
        }

        // The memory chain.
        if let childMemory = original.memory, childMemory.parent == parent.id {
            guard let parentMemory = parent.manifest.memory else {
                throw RecordError.badMemoryImage(reason: "record \(original.id)'s memory parent \(parent.id) holds no page image")
            }
            let childImage = "\(childDirectory)/\(childMemory.image)"
            let parentImage = "\(parent.directory)/\(parentMemory.image)"
            var target: (String, String)?
            if let grandparentID = parentMemory.parent {
                let grandparent = try MemoryChain.sibling(id: grandparentID, of: parent)
                guard let grandparentMemory = grandparent.manifest.memory else {
                    throw RecordError.badMemoryImage(reason: "record \(parent.id)'s memory parent \(grandparentID) holds no page image")
                }
                let name = grandparent.directory.split(separator: "/").last.map(String.init) ?? grandparent.id
                target = ("../\(name)/\(grandparentMemory.image)", "qcow2")
            }
            try await absorbAndRebase(
                image: childImage, parentImage: parentImage, target: target, stopAfter: stopAfter,
                steps: (.memoryAbsorbed, .memoryRebased))
            let counts = try await Blocking.run { try pageCounts(image: childImage, layout: childMemory.layout) }
            manifest.memory?.parent = parentMemory.parent
            manifest.memory?.kind = parentMemory.kind
            manifest.memory?.dataPages = counts.data
            manifest.memory?.zeroPages = counts.zero
            manifest.memory?.unchangedPages = childMemory.layout.guestPages - counts.data - counts.zero
            rewritten.append(childMemory.image)
        }

        // The manifest says so.
        for name in rewritten {
            guard let index = manifest.files.firstIndex(where: { $0.name == name }) else { continue }
            let path = "\(childDirectory)/\(name)"
            manifest.files[index].size = try Files.size(path)
            // A page image is checked by its digests, not hashed whole (RecordManifest.FileEntry).
            if manifest.files[index].sha256 != nil {
                manifest.files[index].sha256 = try await Blocking.run { try FileDigest.sha256(of: path) }
            }
        }
        if manifest != original { _ = try RecordStore.commit(manifest, in: childDirectory) }
        try stop(after: .manifestCommitted, stopAfter)
        Files.remove("\(childDirectory)/\(journalName)")
        try Files.fsync(path: childDirectory)
        try stop(after: .journalRemoved, stopAfter)
    }

    /// Makes `image`, whose backing is `parentImage`, stand on `target`
    /// (the parent's own backing name and format, relative names being
    /// relative to the parent's directory, a sibling of the image's; nil:
    /// none). Idempotent: an image already on `target` is left as it is;
    /// one on neither is refused.
    static func absorbAndRebase(
        image: String, parentImage: String, target: (name: String, format: String)?, stopAfter: Step?,
        steps: (absorbed: Step, rebased: Step)
    ) async throws {
        let current = try QCOW2Image.open(path: image, writable: false, backing: .none).header.backingFile
        if let current, Record.samePath(QCOW2Image.resolve(backingName: current, relativeTo: image), parentImage) {
            try await Blocking.run {
                // The parent's own layer (not its backing). The image gets
                // it as its backing reader: a zero cluster written over it
                // then stays a zero cluster.
                let below = try QCOW2Image.open(path: parentImage, writable: false, backing: .none)
                let top = try QCOW2Image.open(path: image, writable: true, backing: .reader(below))
                _ = try top.absorb(clustersOf: below)
                try top.flush()
            }
            try stop(after: steps.absorbed, stopAfter)
            _ = try await Blocking.run { try QCOW2Image.setBacking(path: image, name: target?.name, format: target?.format) }
            try stop(after: steps.rebased, stopAfter)
            return
        }
        let done: Bool
        switch (current, target) {
        case (nil, nil): done = true
        case (let name?, let target?):
            done = name == target.name
                || Record.samePath(QCOW2Image.resolve(backingName: name, relativeTo: image), QCOW2Image.resolve(backingName: target.name, relativeTo: parentImage))
        default: done = false
        }
        guard done else {
            throw RecordError.corruptManifest(
                path: image,
                reason: "its backing file is '\(current ?? "none")': neither its parent \(parentImage) nor the parent's backing '\(target?.name ?? "none")'")
        }
    }

    /// The clusters of a memory image holding data and zero.
    static func pageCounts(image: String, layout: RAMLayout) throws -> (data: Int, zero: Int) {
        let top = try QCOW2Image.open(path: image, writable: false, backing: .none)
        var data = 0
        var zero = 0
        var next: UInt64 = 0
        while let k = try top.nextAllocatedCluster(atOrAfter: next) {
            next = k + 1
            switch try top.clusterState(k) {
            case .data: data += 1
            case .zero: zero += 1
            default: break
            }
        }
        return (data, zero)
    }

    /// Removes a record: the manifest first (the record stops existing), then the rest.
    static func remove(_ record: Record, stopAfter: Step?) throws {
        Files.remove("\(record.directory)/\(Record.manifestName)")
        try? Files.fsync(path: record.directory)
        try stop(after: .parentManifestRemoved, stopAfter)
        try? FileManager.default.removeItem(atPath: record.directory)
    }
}
