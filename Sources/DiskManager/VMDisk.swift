import CEVMSystem
import Foundation
import QCOW2
import Synchronization

/// One VM's disk directory as the disk manager keeps it:
///
///     overlay.qcow2       T, the live top (backing: B)
///     overlay.next.qcow2  U, only while a checkpoint integrates T into it
///     integration.json    the journal, present exactly while U exists unmerged
///
/// The journal is written (atomically) after U is created and before the
/// guest may write U; it is removed after U, flushed, has been renamed over
/// T. Opening a directory whose journal survived a crash finishes the merge
/// (see `recover`). Docs/disk-manager.md has the procedure.
public final class VMDisk: Sendable {
    public static let overlayName = "overlay.qcow2"
    public static let nextName = "overlay.next.qcow2"
    public static let journalName = "integration.json"
    /// Deepest chain of incremental records before a full one is written.
    public static let maxIncrementalDepth = 16

    struct Journal: Codable {
        var record: String?
        var startedAt: String
    }

    /// What opening the directory found and did.
    public enum Recovery: Sendable, Equatable {
        case none
        /// U had been renamed over T: only the journal was left.
        case journalRemoved
        /// The merge was redone: `copied` clusters of T that U lacked.
        case merged(copied: Int, abandonedRecord: String?)
    }

    public let directory: String
    public let disk: ManagedDisk
    public let recovery: Recovery
    let lastRecord = Mutex<(path: String, depth: Int)?>(nil)

    public var overlayPath: String { "\(directory)/\(Self.overlayName)" }
    var nextPath: String { "\(directory)/\(Self.nextName)" }
    var journalPath: String { "\(directory)/\(Self.journalName)" }

    /// Opens the disk in `directory` (its overlay must exist), recovering an
    /// interrupted integration first.
    public init(directory: String) throws(DiskManagerError) {
        self.directory = directory
        recovery = try Self.recover(directory: directory)
        let top: QCOW2Image
        do throws(QCOW2Error) {
            top = try QCOW2Image.open(path: "\(directory)/\(Self.overlayName)", writable: true)
        } catch {
            throw .image(error)
        }
        disk = ManagedDisk(top: top)
    }

    // MARK: - Checkpoints

    /// A cut in progress: `wait` until U holds everything and R is durable.
    public struct Cut: Sendable {
        public let integration: Integration
        /// True when the record holds only this epoch's clusters over `backing`.
        public let incremental: Bool
        /// The record's backing file as its header names it: B (absolute), or the
        /// previous record's disk ("../PARENTDIR/disk.qcow2" when a sibling).
        public let backing: String
        public let backingFormat: String
        public let recordPath: String?
    }

    /// Everything a cut needs, made before the switch-over so that the cut
    /// itself costs the guest no I/O: U and the record exist, the journal is
    /// durable. (A crash from here on is recovered like one during the
    /// integration: U is empty or partial, and every T cluster U lacks is
    /// copied into it.)
    public struct PreparedCut: Sendable {
        let u: QCOW2Image
        let record: QCOW2Image?
        let hooks: Integration.Hooks
        public let incremental: Bool
        public let backing: String
        public let backingFormat: String
        public let recordPath: String?
        let depth: Int
    }

    /// Creates U, the record (incremental over `previousRecord` when this
    /// disk cut that record itself and the chain is short enough, unless
    /// `full`) and the journal. The guest may still be running.
    public func prepareCut(recordPath: String?, previousRecord: String?, full: Bool) throws(DiskManagerError) -> PreparedCut {
        try prepareCut(recordPath: recordPath, previousRecord: previousRecord, full: full, hooks: Integration.Hooks())
    }

    func prepareCut(recordPath: String?, previousRecord: String?, full: Bool, hooks: Integration.Hooks) throws(DiskManagerError) -> PreparedCut {
        let t = disk.top
        guard let baseName = t.header.backingFile else {
            throw .mismatch("\(t.path) has no backing file")
        }
        guard !disk.isIntegrating else { throw .integrationFailed("a checkpoint is already integrating this disk") }
        let baseFormat = t.header.backingFormat ?? "qcow2"
        let clusterBits = UInt32(t.clusterSize.trailingZeroBitCount)
        var incremental = false
        var backing = QCOW2Image.resolve(backingName: baseName, relativeTo: t.path)
        var backingFormat = baseFormat
        var depth = 0
        if !full, let previousRecord, let last = lastRecord.withLock({ $0 }), last.path == previousRecord,
            last.depth < Self.maxIncrementalDepth, Files.exists(previousRecord)
        {
            incremental = true
            backing = Self.backingName(previousRecord, for: recordPath)
            backingFormat = "qcow2"
            depth = last.depth + 1
        }
        let u: QCOW2Image
        var record: QCOW2Image?
        Files.remove(nextPath)  // a U left by a failure before its journal
        do throws(QCOW2Error) {
            u = try QCOW2Image.createOverlay(path: nextPath, backingFile: baseName, backingFormat: baseFormat, clusterBits: clusterBits)
            if let recordPath {
                record = try QCOW2Image.createOverlay(path: recordPath, backingFile: backing, backingFormat: backingFormat, clusterBits: clusterBits)
            }
        } catch {
            Files.remove(nextPath)
            throw .image(error)
        }
        do {
            try writeJournal(Journal(record: recordPath, startedAt: Timestamp.now()))
        } catch {
            Files.remove(nextPath)
            throw error
        }
        return PreparedCut(
            u: u, record: record, hooks: hooks, incremental: incremental, backing: backing, backingFormat: backingFormat,
            recordPath: recordPath, depth: depth)
    }

    /// How a record's disk names the previous record's: relatively
    /// ("../PARENTDIR/disk.qcow2") when both records lie in the same
    /// records directory, so a records tree moved or renamed as a whole
    /// still opens; else by its absolute path.
    static func backingName(_ previousRecord: String, for recordPath: String?) -> String {
        func split(_ path: String) -> (directory: String, name: String)? {
            guard let slash = path.lastIndex(of: "/") else { return nil }
            return (String(path[..<slash]), String(path[path.index(after: slash)...]))
        }
        guard let recordPath, let previous = split(previousRecord), let record = split(recordPath),
            let previousRecordDirectory = split(previous.directory), let recordDirectory = split(record.directory),
            !previousRecordDirectory.directory.isEmpty, previousRecordDirectory.directory == recordDirectory.directory,
            previousRecordDirectory.name != recordDirectory.name, !previousRecordDirectory.name.isEmpty
        else { return previousRecord }
        return "../\(previousRecordDirectory.name)/\(previous.name)"
    }

    /// Gives up a prepared cut that was never made (the checkpoint failed
    /// before its switch-over): U and the journal go; T stays as it is.
    public func abandon(_ prepared: PreparedCut) {
        Files.remove(journalPath)
        Files.remove(nextPath)
        if let recordPath = prepared.recordPath { Files.remove(recordPath) }
    }

    /// The cut, at the switch-over (nothing writes the disk: Old_VM stopped
    /// and flushed, New_VM not running): freezes S0 and starts integrating.
    public func cut(_ prepared: PreparedCut) throws(DiskManagerError) -> Cut {
        let integration: Integration
        do {
            integration = try disk.cut(u: prepared.u, record: prepared.record, incremental: prepared.incremental, hooks: prepared.hooks)
        } catch {
            abandon(prepared)
            throw error
        }
        if let recordPath = prepared.recordPath { lastRecord.withLock { $0 = (recordPath, prepared.depth) } }
        return Cut(
            integration: integration, incremental: prepared.incremental, backing: prepared.backing,
            backingFormat: prepared.backingFormat, recordPath: prepared.recordPath)
    }

    /// `prepareCut` and `cut` at once.
    public func cut(recordPath: String?, previousRecord: String?, full: Bool) throws(DiskManagerError) -> Cut {
        try cut(try prepareCut(recordPath: recordPath, previousRecord: previousRecord, full: full))
    }

    func cut(recordPath: String?, previousRecord: String?, full: Bool, hooks: Integration.Hooks) throws(DiskManagerError) -> Cut {
        try cut(try prepareCut(recordPath: recordPath, previousRecord: previousRecord, full: full, hooks: hooks))
    }

    /// Waits for the integration, then makes U the overlay: U (flushed by
    /// the integration) is renamed over T and the journal removed.
    public func finish(_ cut: Cut) async throws(DiskManagerError) -> Integration.Stats {
        let stats: Integration.Stats
        do {
            stats = try await cut.integration.wait()
        } catch {
            lastRecord.withLock { $0 = nil }  // the next record must be full
            throw error
        }
        disk.settle()
        do {
            try Files.rename(nextPath, to: overlayPath)
        } catch {
            throw .state(path: nextPath, reason: "cannot rename over \(overlayPath): \(error)")
        }
        Files.remove(journalPath)
        return stats
    }

    /// Forgets the last record (the next cut writes a full one): call it
    /// when the record this disk cut was not committed.
    public func forgetLastRecord() {
        lastRecord.withLock { $0 = nil }
    }

    private func writeJournal(_ journal: Journal) throws(DiskManagerError) {
        do {
            try Files.writeAtomically(Array(try JSONEncoder().encode(journal)), to: journalPath)
        } catch {
            throw .state(path: journalPath, reason: "cannot write: \(error)")
        }
    }

    // MARK: - Recovery

    /// Finishes an integration a crash interrupted. Every cluster New_VM
    /// wrote after switch-over went to U (at or below the sweep's cursor) or
    /// to T (above it), and the sweep moves clusters T→U in ascending order
    /// without ever giving T a cluster it has passed. So a cluster U holds is
    /// at least as new as T's, and a cluster only T holds is T's: copying
    /// into U every cluster of T that U lacks rebuilds the merged disk,
    /// without knowing where the cursor was. Writes never flushed may be
    /// lost, as with any crash; flushed ones are in T or U.
    public static func recover(directory: String) throws(DiskManagerError) -> Recovery {
        let journalPath = "\(directory)/\(journalName)"
        let nextPath = "\(directory)/\(nextName)"
        let overlayPath = "\(directory)/\(overlayName)"
        guard Files.exists(journalPath) else {
            Files.remove(nextPath)  // created, but the guest never saw it
            return .none
        }
        var abandoned: String?
        if let bytes = try? Files.read(journalPath), let journal = try? JSONDecoder().decode(Journal.self, from: Data(bytes)) {
            abandoned = journal.record
        }
        guard Files.exists(nextPath) else {
            Files.remove(journalPath)
            return .journalRemoved
        }
        var copied = 0
        do throws(QCOW2Error) {
            let t = try QCOW2Image.open(path: overlayPath, writable: false)
            let u = try QCOW2Image.open(path: nextPath, writable: true, backing: .reader(t.backing ?? t))
            copied = try u.absorb(clustersOf: t)
            try u.flush()
        } catch {
            throw .image(error)
        }
        do {
            try Files.rename(nextPath, to: overlayPath)
        } catch {
            throw .state(path: nextPath, reason: "cannot rename over \(overlayPath): \(error)")
        }
        Files.remove(journalPath)
        if let abandoned { Files.remove(abandoned) }
        return .merged(copied: copied, abandonedRecord: abandoned)
    }
}
