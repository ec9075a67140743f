import CEVMSystem
import Control
import Foundation
import QEMU
import Synchronization
import VMStore

/// The one owner of a VM's mutable supervisor state: its status, its
/// QEMU instance, the console log, the disk service, the last record, the
/// schedule in force and whether a checkpoint is under way. Everything
/// else (the boot, the checkpoints, the scheduler, the control socket)
/// reads and changes it through these methods only, one at a time.
///
/// It alone writes `status.json`: each change numbers a snapshot in the
/// order the actor took it and hands it to its `StatusWriter`, which
/// writes the newest one off the cooperative pool; `onStatus` sees every
/// change, in order, as it is made.
actor VMState {
    private(set) var status: VMStatus
    /// The number of the last snapshot taken (one per change).
    private(set) var sequence: UInt64 = 0
    private(set) var instance: QEMUInstance?
    /// Index of the next instance (0 boots; each CEVM checkpoint adds one).
    private var nextInstance = 0
    /// The VM's console log, shared by all its instances.
    private(set) var console: ConsoleLog?
    /// The disk manager serving the VM's disk (nil for a VM without one).
    private(set) var disk: DiskService?
    /// The last checkpoint this supervisor committed and its disk record
    /// (the next disk record may be incremental over it).
    private(set) var lastRecord: (id: String, disk: String)?
    /// The directory of the last record this supervisor committed whose
    /// memory is a page image (the next memory record may build on it).
    private(set) var lastMemoryRecord: String?
    /// The schedule in force, and the signal fired when it changes (the
    /// scheduler service waits for it to start the new one).
    private var schedule: ScheduleOptions?
    private var scheduleChanged = AsyncSignal()
    /// A checkpoint is under way (one at a time).
    private var busy = false
    /// The running instance's ports on cevm networks (their sockets are
    /// QEMU's alone; the ids are what the switch knows them by).
    private(set) var networkPorts: [NetworkPort] = []

    private let writer: StatusWriter
    private let onStatus: (@Sendable (VMStatus) -> Void)?

    init(status: VMStatus, writer: StatusWriter, onStatus: (@Sendable (VMStatus) -> Void)?) {
        self.status = status
        self.writer = writer
        self.onStatus = onStatus
    }

    /// Changes the status: the snapshot gets the next number, goes to the
    /// writer (which never writes an older one over a newer one) and to
    /// `onStatus`. Returns the snapshot.
    @discardableResult
    func update(_ change: @Sendable (inout VMStatus) -> Void) -> VMStatus {
        change(&status)
        status.updatedAt = Timestamp.now()
        sequence += 1
        writer.submit(status, sequence: sequence)
        onStatus?(status)
        return status
    }

    /// Returns once every snapshot taken so far is on disk (or its write failed).
    func flush() async {
        await writer.flush()
    }

    // MARK: Instances

    /// The VM booted: its first instance and its console log.
    func booted(console: ConsoleLog) {
        self.console = console
        nextInstance = 1
    }

    /// The instance running the VM from now on.
    func adopt(_ instance: QEMUInstance) {
        self.instance = instance
    }

    // MARK: Disk

    func setNetworkPorts(_ ports: [NetworkPort]) { networkPorts = ports }

    func setDisk(_ service: DiskService) {
        disk = service
    }

    /// The disk service, taken away (nil once taken): the caller stops it.
    func takeDisk() -> DiskService? {
        defer { disk = nil }
        return disk
    }

    func setLastRecord(_ record: (id: String, disk: String)?) {
        lastRecord = record
    }

    func setLastMemoryRecord(_ directory: String?) {
        lastMemoryRecord = directory
    }

    // MARK: Checkpoints

    /// Claims the VM for a checkpoint: its running instance, or
    /// `notRunning` / `busy`. `endCheckpoint()` gives it back.
    func beginCheckpoint(_ name: VMName) throws -> QEMUInstance {
        guard status.state == .running, let instance else { throw SupervisorError.notRunning(name) }
        guard !busy else { throw SupervisorError.busy(name, "a checkpoint is under way") }
        busy = true
        return instance
    }

    func endCheckpoint() {
        busy = false
    }

    /// Returns once no checkpoint is under way (or the task is cancelled).
    /// A checkpoint ends on its own: each of its waits has a timeout.
    func checkpointEnded() async {
        while busy && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// What a checkpoint starts from; `newInstance` also takes an instance
    /// index (a CEVM checkpoint starts one).
    func checkpointContext(newInstance: Bool) -> CheckpointContext {
        defer { if newInstance { nextInstance += 1 } }
        return CheckpointContext(
            disk: disk, previous: lastRecord, previousMemory: lastMemoryRecord, console: console, index: nextInstance)
    }

    // MARK: Schedule

    /// Sets the schedule in force (nil: none), shows it in the status and
    /// wakes the scheduler to restart its loop.
    func setSchedule(_ options: ScheduleOptions?) {
        schedule = options
        let summary = options?.summary
        update { $0.schedule = summary.map { ScheduleState(summary: $0) } }
        scheduleChanged.fire()
        scheduleChanged = AsyncSignal()
    }

    /// The schedule in force, and a signal fired when it next changes.
    func currentSchedule() -> (options: ScheduleOptions?, changed: AsyncSignal) {
        (schedule, scheduleChanged)
    }
}

/// What a checkpoint starts from, read from `VMState` in one step.
struct CheckpointContext: Sendable {
    var disk: DiskService?
    var previous: (id: String, disk: String)?
    /// The last record with a page image (its directory).
    var previousMemory: String?
    var console: ConsoleLog?
    var index: Int
}

/// Writes a VM's status snapshots to `status.json`, off the cooperative
/// pool: a thread of its own runs while snapshots are pending and ends
/// when none is. Snapshots are coalesced (a newer pending one replaces an
/// older one not yet written) and written in order of their numbers, so
/// the file never goes back; each write is atomic and durable
/// (`Files.writeAtomically`: a unique temporary name, fsync, rename).
final class StatusWriter: Sendable {
    private struct State {
        /// The newest snapshot not yet written.
        var pending: (sequence: UInt64, status: VMStatus)?
        /// The number of the newest snapshot submitted.
        var submitted: UInt64 = 0
        /// The number of the newest snapshot written (or whose write failed).
        var written: UInt64 = 0
        /// A drain thread is running.
        var draining = false
        /// Flushes waiting for a number to be written.
        var waiters: [(sequence: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        /// How many writes were made (for tests: fewer than snapshots when coalesced).
        var writes = 0
    }

    private let state = Mutex(State())
    private let write: @Sendable (VMStatus) throws -> Void
    private let failed: @Sendable (any Error) -> Void

    init(write: @escaping @Sendable (VMStatus) throws -> Void, failed: @escaping @Sendable (any Error) -> Void) {
        self.write = write
        self.failed = failed
    }

    /// The number of writes made so far.
    var writes: Int { state.withLock { $0.writes } }

    /// Queues snapshot `sequence` (replacing an older pending one); one
    /// not newer than a snapshot already submitted is dropped.
    func submit(_ status: VMStatus, sequence: UInt64) {
        let start = state.withLock { state -> Bool in
            guard sequence > state.submitted else { return false }
            state.submitted = sequence
            state.pending = (sequence, status)
            guard !state.draining else { return false }
            state.draining = true
            return true
        }
        if start {
            let thread = Thread { [self] in drain() }
            thread.name = "cevm status writer"
            thread.start()
        }
    }

    /// Returns once every snapshot submitted before the call is written
    /// (or failed to be). Not cancellable: a write is one small file.
    func flush() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                guard state.written < state.submitted else { return true }
                state.waiters.append((state.submitted, continuation))
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Runs on the writer thread: writes the newest pending snapshot until none is left.
    private func drain() {
        while true {
            let next = state.withLock { state -> (sequence: UInt64, status: VMStatus)? in
                guard let pending = state.pending else {
                    state.draining = false
                    return nil
                }
                state.pending = nil
                return pending
            }
            guard let next else { return }
            do { try write(next.status) } catch { failed(error) }
            let ready = state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.written = next.sequence
                state.writes += 1
                let ready = state.waiters.filter { $0.sequence <= next.sequence }.map(\.continuation)
                state.waiters.removeAll { $0.sequence <= next.sequence }
                return ready
            }
            for continuation in ready { continuation.resume() }
        }
    }
}
