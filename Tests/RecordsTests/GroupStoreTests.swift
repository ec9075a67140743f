#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Records
import Testing

/// The staging directories of group checkpoints: a running coordinator's
/// is locked, so the cleanup every group checkpoint runs as it starts
/// removes only those whose coordinator is gone.
struct GroupStoreTests {
    let root = "/tmp/cevm-groups-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    func manifest(_ id: String) -> GroupManifest {
        GroupManifest(
            id: id, createdAt: Timestamp.now(),
            members: [.init(vm: "a", record: RecordStore.newID(), mechanism: .cevm, guestPauseMs: 1, requestToDurableMs: 2, networks: ["lab"])],
            networks: [], requestToCommitMs: 3)
    }

    @Test func aHeldStagingDirectoryIsKeptAndAnAbandonedOneRemoved() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = GroupStore(root: root)
        let runningID = GroupStore.newID()
        var running: (path: String, lock: FileLock)? = try store.staging(id: runningID)
        var abandoned: (path: String, lock: FileLock)? = try store.staging(id: "g" + RecordStore.newID() + "x")
        let abandonedPath = try #require(abandoned?.path)
        abandoned = nil  // its coordinator is gone: the lock is released
        try Files.makeDirectory("\(store.directory)/.removing-g1")
        store.removeUncommitted()
        let runningPath = try #require(running?.path)
        #expect(Files.isDirectory(runningPath), "a running coordinator's staging directory is kept")
        #expect(!Files.exists(abandonedPath), "an abandoned staging directory is removed")
        #expect(!Files.exists("\(store.directory)/.removing-g1"))

        // Committed: the lock file goes with the staging name, the group loads.
        let record = try store.commit(manifest(runningID), staging: runningPath)
        #expect(!Files.exists("\(record.directory)/\(GroupStore.stagingLockName)"))
        #expect(try store.load(id: runningID).manifest.id == runningID)
        running = nil
        store.removeUncommitted()
        #expect(store.list().map(\.id) == [runningID])
    }
}
