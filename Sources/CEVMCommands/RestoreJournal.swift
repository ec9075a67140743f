#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Supervisor
import VMStore

/// What a restore changed in the VM's directory before the restored guest
/// ran, journaled in `restore-journal.json` before each change is made, so
/// that a restore that fails (a stream QEMU refuses, a supervisor that
/// cannot start, a qemu-img that fails, …) or whose `cevm restore` is
/// killed leaves the directory as it was: the new overlay and the
/// `record-ID.qcow2` it made are removed, the overlay moved aside goes
/// back, and the spec is the one the VM had (none for a name the restore
/// would have created). The record is never written, and files that were
/// there before stay.
///
/// A restore that ends (restored, or undone) removes its journal. One left
/// behind is recovered by the next `cevm restore` or `cevm run` of the VM,
/// once nothing of it runs: if the supervisor it started got the restored
/// guest running (its `run/restore.json` names the record), the restore took
/// effect and only the journal goes; otherwise its changes are undone.
struct RestoreJournal: Codable {
    /// The record being restored.
    var record: String
    /// `disk/record-ID.qcow2`, made by this restore (a moved base).
    var madeRecordDisk: String?
    /// `spec.json` is being replaced; the one before (if any) is kept in
    /// `restore-journal.spec` until the restore ends.
    var wroteSpec = false
    var hadSpec = false
    /// The VM's overlay is renamed to `overlay.before-restore.qcow2`.
    var movedOverlayAside = false
    /// Whatever `disk/overlay.qcow2` is from now on, this restore's
    /// supervisor made it.
    var overlayIsNew = false

    private enum CodingKeys: String, CodingKey {
        case record, madeRecordDisk, wroteSpec, hadSpec, movedOverlayAside, overlayIsNew
    }

    /// Set by `begin`/`load`; not part of the file.
    private(set) var paths: VMPaths?

    static func path(_ paths: VMPaths) -> String { "\(paths.directory)/restore-journal.json" }
    static func savedSpecPath(_ paths: VMPaths) -> String { "\(paths.directory)/restore-journal.spec" }
    static func aside(_ paths: VMPaths) -> String { "\(paths.diskDirectory)/overlay.before-restore.qcow2" }

    /// Starts the journal of a restore of `record` into `paths`.
    static func begin(paths: VMPaths, record: String) throws -> RestoreJournal {
        var journal = RestoreJournal(record: record)
        journal.paths = paths
        // An earlier restore's timing must not pass for this one's.
        Files.remove(RestoreTiming.path(paths))
        try journal.write()
        return journal
    }

    /// Notes a change in the journal (durably) before it is made.
    mutating func note(_ change: (inout RestoreJournal) -> Void) throws {
        change(&self)
        try write()
    }

    /// Keeps the VM's spec (if it has one) beside the journal, then notes
    /// that the spec is about to be replaced.
    mutating func saveSpec() throws {
        guard let paths else { return }
        let saved = Self.savedSpecPath(paths)
        if Files.exists(paths.spec) {
            try Files.writeAtomically(try Files.read(paths.spec), to: saved)
            try note {
                $0.hadSpec = true
                $0.wroteSpec = true
            }
        } else {
            Files.remove(saved)
            try note { $0.wroteSpec = true }
        }
    }

    /// The restore took effect: its journal goes.
    func finish() {
        guard let paths else { return }
        Files.remove(Self.path(paths))
        Files.remove(Self.savedSpecPath(paths))
    }

    private func write() throws {
        guard let paths else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try Files.writeAtomically(Array(try encoder.encode(self)), to: Self.path(paths))
    }

    /// Undoes the changes once nothing of the VM runs any more (its
    /// supervisor ends right after it reports the failure; it is given
    /// `wait` to); returns the error to report: `error`, with what could
    /// not be put back. The journal stays when something could not be.
    func undo(after error: any Error, wait: Duration = .seconds(30)) async -> any Error {
        guard let paths else { return error }
        let deadline = ContinuousClock.now + wait
        while let holder = paths.lockHolder {
            guard ContinuousClock.now < deadline else {
                return CLIError("\(error) (\(holder) still holds the VM: \(paths.directory) is left as the restore made it)")
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        let problems = putBack(paths)
        guard !problems.isEmpty else { return error }
        return CLIError("\(error) (the restore's changes could not all be undone: \(problems.joined(separator: "; ")))")
    }

    /// Puts the directory back as the journal says it was; what could not
    /// be, and the journal is removed only when everything was. A change
    /// noted but never made (the restore was killed between the two) is
    /// found not made and skipped.
    private func putBack(_ paths: VMPaths) -> [String] {
        var problems: [String] = []
        func remove(_ path: String) {
            if unlink(path) != 0 && errno != ENOENT { problems.append("\(path) (\(String(cString: strerror(errno))))") }
        }
        if overlayIsNew { remove(paths.overlay) }
        if movedOverlayAside && Files.exists(Self.aside(paths)) && !Files.exists(paths.overlay)
            && rename(Self.aside(paths), paths.overlay) != 0
        {
            problems.append("\(Self.aside(paths)) back to \(paths.overlay) (\(String(cString: strerror(errno))))")
        }
        if let madeRecordDisk { remove(madeRecordDisk) }
        if wroteSpec {
            if hadSpec {
                do { try Files.writeAtomically(try Files.read(Self.savedSpecPath(paths)), to: paths.spec) } catch {
                    problems.append("\(paths.spec) (\(error))")
                }
            } else {
                remove(paths.spec)
            }
        }
        if problems.isEmpty { finish() }
        return problems
    }

    /// Recovers the journal a killed restore left in `paths`, if any and if
    /// nothing of the VM runs: says what it did (nil: nothing to do).
    static func recover(_ paths: VMPaths) async -> String? {
        guard paths.lockHolder == nil, let bytes = try? Files.read(path(paths), limit: 1 << 16) else { return nil }
        guard var journal = try? JSONDecoder().decode(RestoreJournal.self, from: Data(bytes)) else {
            return "an unreadable restore journal \(path(paths)) was left as it is"
        }
        journal.paths = paths
        if RestoreTiming.read(paths, record: journal.record) != nil {
            journal.finish()
            return "an interrupted restore of \(journal.record) had taken effect; its journal is removed"
        }
        let problems = journal.putBack(paths)
        guard problems.isEmpty else {
            return "an interrupted restore of \(journal.record) could not be undone wholly: \(problems.joined(separator: "; "))"
        }
        return "an interrupted restore of \(journal.record) was undone"
    }
}
