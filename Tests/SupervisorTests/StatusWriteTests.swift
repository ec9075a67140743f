import CEVMSystem
import Control
import Foundation
import Synchronization
import TestSupport
import Testing
import VMStore

@testable import Supervisor

/// status.json has one writer, the VM's state owner, and never goes back:
/// many tasks updating the status at once leave the newest snapshot in the
/// file, a reader never sees an older one after a newer one, `onStatus`
/// sees every change in order, and a flush waits for the last write.
@Suite struct StatusWriteTests {
    @Test func concurrentUpdatesNeverMoveTheFileBackwards() async throws {
        let scratch = try Scratch()
        let home = Home(root: scratch.path)
        let name = try VMName("s")
        try Files.makeDirectory(home.vm(name).directory)
        let observed = Mutex<[Int]>([])
        var options = Supervisor.Options()
        options.onStatus = { status in observed.withLock { $0.append(Int(status.message ?? "0") ?? 0) } }
        let supervisor = Supervisor(home: home, name: name, options: options)
        let paths = home.vm(name)
        let writers = 4
        let updatesPerWriter = 50

        // A reader polls the file while the writers run.
        let done = Atomic<Bool>(false)
        let seen = Mutex<[Int]>([])
        let reader = Thread {
            while !done.load(ordering: .acquiring) {
                if let value = paths.readStatus()?.message.flatMap({ Int($0) }) { seen.withLock { $0.append(value) } }
            }
        }
        reader.start()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<writers {
                group.addTask {
                    for _ in 0..<updatesPerWriter {
                        await supervisor.update { $0.message = String((Int($0.message ?? "0") ?? 0) + 1) }
                    }
                }
            }
        }
        await supervisor.state.flush()
        done.store(true, ordering: .releasing)
        let total = writers * updatesPerWriter
        // The last snapshot taken is the one on disk, once flushed.
        #expect(paths.readStatus()?.message == String(total))
        #expect(await supervisor.state.sequence == UInt64(total))
        // onStatus saw every change, in order.
        #expect(observed.withLock { $0 } == Array(1...total))
        let values = seen.withLock { $0 }
        #expect(zip(values, values.dropFirst()).allSatisfy { $0 <= $1 }, "the file went backwards: \(values)")
        // Every temporary name was its own, and none is left.
        #expect(try Files.list(paths.directory) == ["status.json"])
    }

    /// A writer busy with one snapshot keeps only the newest of those that
    /// arrive meanwhile: fewer writes than snapshots, in increasing order,
    /// the last one written last.
    @Test func pendingSnapshotsAreCoalesced() async throws {
        let written = Mutex<[Int]>([])
        let writer = StatusWriter(
            write: { status in
                usleep(20_000)
                written.withLock { $0.append(Int(status.message ?? "0") ?? 0) }
            },
            failed: { _ in })
        let state = VMState(status: VMStatus(name: try VMName("c"), state: .starting), writer: writer, onStatus: nil)
        let total = 100
        for i in 1...total { await state.update { $0.message = String(i) } }
        await state.flush()
        let values = written.withLock { $0 }
        #expect(values.last == total)
        #expect(values.count < total, "no coalescing: \(values.count) writes")
        #expect(writer.writes == values.count)
        #expect(zip(values, values.dropFirst()).allSatisfy { $0 < $1 }, "out of order: \(values)")
    }

    /// A flush returns only after the snapshots taken before it are
    /// written, however slow the write; a failed write does not hang it.
    @Test func flushWaitsForTheLastWrite() async throws {
        let written = Mutex<[Int]>([])
        let failures = Atomic<Int>(0)
        let writer = StatusWriter(
            write: { status in
                usleep(100_000)
                let value = Int(status.message ?? "0") ?? 0
                if value == 2 { throw CancellationError() }
                written.withLock { $0.append(value) }
            },
            failed: { _ in failures.add(1, ordering: .relaxed) })
        let state = VMState(status: VMStatus(name: try VMName("f"), state: .starting), writer: writer, onStatus: nil)
        await state.update { $0.message = "1" }
        await state.flush()
        #expect(written.withLock { $0 } == [1])
        await state.update { $0.message = "2" }
        await state.flush()
        #expect(failures.load(ordering: .relaxed) == 1)
        await state.update { $0.message = "3" }
        await state.flush()
        #expect(written.withLock { $0 } == [1, 3])
        // Nothing pending: a flush returns at once.
        await state.flush()
    }

    /// A schedule change wakes the scheduler and shows in the status.
    @Test func scheduleChangesWakeTheScheduler() async throws {
        let writer = StatusWriter(write: { _ in }, failed: { _ in })
        let state = VMState(status: VMStatus(name: try VMName("k"), state: .running), writer: writer, onStatus: nil)
        let (none, changed) = await state.currentSchedule()
        #expect(none == nil && !changed.fired)
        let options = ScheduleOptions(everySeconds: 60, mtbfSeconds: nil, checkpoint: CheckpointOptions(mechanism: .cevm), keep: nil)
        await state.setSchedule(options)
        #expect(changed.fired)
        let (current, next) = await state.currentSchedule()
        #expect(current?.everySeconds == 60 && !next.fired)
        #expect(await state.status.schedule != nil)
        await state.setSchedule(nil)
        #expect(next.fired)
        #expect(await state.status.schedule == nil)
    }
}
