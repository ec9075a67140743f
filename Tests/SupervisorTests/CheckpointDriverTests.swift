import CEVMSystem
import CheckpointProtocol
import Synchronization
import Testing

@testable import Supervisor

/// The driver loop with a fake run (no QEMU): actions report back, watches
/// run beside them, and a terminal phase ends every wait still running.
@Suite struct CheckpointDriverTests {
    final class FakeRun: CheckpointRun {
        typealias Machine = CEVMMachine
        let performed = Mutex<[CEVMMachine.Action]>([])
        let undone = Mutex<[CEVMMachine.Action]>([])
        let watchEnded = Latch<Bool>()
        let never = Latch<Int>()
        let streamBytes: Int64

        init(streamBytes: Int64) { self.streamBytes = streamBytes }

        func perform(_ action: CEVMMachine.Action) async -> CEVMMachine.Event? {
            performed.withLock { $0.append(action) }
            return action.completion
        }

        func watches(startedWith action: CEVMMachine.Action?, report: @escaping @Sendable (CEVMMachine.Event) -> Void)
            -> [@Sendable () async -> Void]
        {
            guard action == .startMigration else { return [] }
            let (never, ended, bytes) = (self.never, self.watchEnded, streamBytes)
            return [
                // A wait that would never end by itself (a guest that never converges).
                {
                    _ = await never.wait()
                    ended.set(true)
                },
                { report(bytes > 0 ? .streamProgress(bytes) : .sourceCompleted) },
            ]
        }

        func undo(_ action: CEVMMachine.Action) async { undone.withLock { $0.append(action) } }
        func observe(_ event: CEVMMachine.Event) {}
    }

    static let limits = CEVMMachine.Limits(streamBytes: 100, onLimit: .cancel, backstopBytes: 1000)

    @Test func aStreamPastItsCapEndsTheCheckpointAndEveryWaitAtOnce() async {
        let run = FakeRun(streamBytes: 101)
        var machine = CEVMMachine(limits: Self.limits)
        await drive(&machine, run)
        guard case .failed(let failure) = machine.phase else {
            Issue.record("not failed: \(machine.phase.name)")
            return
        }
        #expect(failure.outcome == .oldRunsOn)
        #expect(run.watchEnded.value == true, "the endless watch was cancelled with the group")
        #expect(run.never.value == nil)
        #expect(
            run.undone.withLock { $0 } == [.cancelMigration, .resumeOld, .stopNew, .abortTee, .releaseDisk(cutMade: false), .discardRecord])
        #expect(!run.performed.withLock { $0 }.contains(.cutDisk))
    }

    @Test func theSuccessPathCommitsAndUndoesNothing() async {
        let run = FakeRun(streamBytes: 0)
        var machine = CEVMMachine(limits: Self.limits)
        await drive(&machine, run)
        #expect(machine.phase == .committed(newLost: false))
        #expect(run.undone.withLock { $0 }.isEmpty)
        #expect(run.performed.withLock { $0 }.last == .commit)
        #expect(run.watchEnded.value == true)
    }
}
