import CEVMSystem
import QMP
import Synchronization

/// Waits for the end of one migration, on either side, through QMP's
/// `MIGRATION` events (the `events` capability) rather than by polling
/// `query-migrate`: every QMP command runs in QEMU's main loop under its big
/// lock, which a running guest's vCPU needs too, so polling every few
/// milliseconds while the guest computes costs it. One `query-migrate` at
/// the end fetches the figures (downtime, total time). A slow poll backs the
/// events up, in case one was lost.
///
/// Subscribe with `start` before issuing `migrate` / `migrate-incoming`:
/// events that arrive before the subscription are not kept. `end` (or
/// `completion`) consumes the subscription: call it once per watch; after
/// it, `finalInfo` and `info` ask QEMU directly.
public struct MigrationWatch: Sendable {
    public let qmp: QMPClient
    private let events: AsyncStream<QMPEvent>

    /// Statuses after which a migration does not go on.
    public static let terminal: Set<String> = ["completed", "failed", "cancelled"]

    /// Subscribes to `qmp`'s events and turns the `events` capability on.
    public static func start(_ qmp: QMPClient) async throws -> MigrationWatch {
        let watch = MigrationWatch(qmp: qmp, events: qmp.events())
        try await MigrationSettings.setCapability(qmp, "events", true)
        return watch
    }

    private init(qmp: QMPClient, events: AsyncStream<QMPEvent>) {
        self.qmp = qmp
        self.events = events
    }

    /// Waits until the migration completes and returns `query-migrate`'s
    /// answer then; throws when it fails or is cancelled instead, or after
    /// `timeout`.
    public func completion(timeout: Duration = .seconds(600), backupPoll: Duration = .seconds(1)) async throws -> JSONValue {
        try await end(timeout: timeout, backupPoll: backupPoll)
        return try await info()
    }

    /// Waits until the migration completes, without asking QEMU anything
    /// once the event came (a switch-over waits on this: every QMP round
    /// trip there is guest pause); throws when it fails or is cancelled
    /// instead, or after `timeout`.
    public func end(timeout: Duration = .seconds(600), backupPoll: Duration = .seconds(1)) async throws {
        let qmp = self.qmp
        let events = self.events
        let status = try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask {
                for await event in events where event.name == "MIGRATION" {
                    if let status = event.data["status"]?.stringValue, Self.terminal.contains(status) { return status }
                }
                return nil  // the stream ended: the connection closed (query-migrate below says so)
            }
            group.addTask {
                let deadline = ContinuousClock.now + timeout
                while ContinuousClock.now < deadline {
                    try await Task.sleep(for: backupPoll)
                    if let status = try await qmp.execute("query-migrate")["status"]?.stringValue, Self.terminal.contains(status) {
                        return status
                    }
                }
                throw SupervisorError.checkpointFailed("migration not done after \(timeout)")
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
        if status == "completed" { return }
        _ = try await info()  // names the failure
    }

    /// `query-migrate`'s answer once the migration has ended, polled every
    /// few milliseconds: for after a switch-over, when the guest no longer
    /// runs on this instance and the source may not have said `completed`
    /// yet (the tee saw the stream's end first). Throws with QEMU's reason
    /// unless it completed.
    public func finalInfo(timeout: Duration = .seconds(30)) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let status = try await qmp.execute("query-migrate")["status"]?.stringValue ?? ""
            if Self.terminal.contains(status) { break }
            try await Task.sleep(for: .milliseconds(5))
        }
        return try await info()
    }

    /// `query-migrate`'s answer when the migration completed; throws with
    /// QEMU's reason otherwise.
    public func info() async throws -> JSONValue {
        let info = try await qmp.execute("query-migrate")
        switch info["status"]?.stringValue {
        case "completed": return info
        case let status:
            throw SupervisorError.checkpointFailed(
                "migration \(status ?? "in an unknown state"): \(info["error-desc"]?.stringValue ?? "no reason given")")
        }
    }
}

/// The instants an instance's vCPUs stopped and started again, as QEMU
/// stamps its `STOP` and `RESUME` events (host wall-clock time, µs): the
/// guest pause of a switch-over is Old_VM's STOP to New_VM's RESUME, read
/// off QEMU's own clock rather than the supervisor's view of it. Subscribe
/// before the command that stops or resumes the guest.
public final class RunStateTimes: Sendable {
    private let stopped = Latch<Double>()
    private let resumed = Latch<Double>()
    private let watcher: Task<Void, Never>

    public init(_ qmp: QMPClient) {
        let events = qmp.events()
        let (stopped, resumed) = (self.stopped, self.resumed)
        // Ends with the QMP connection, or when this is released.
        watcher = Task {
            for await event in events {
                switch event.name {
                case "STOP": stopped.set(event.timestamp.secondsSince1970)
                case "RESUME": resumed.set(event.timestamp.secondsSince1970)
                default: break
                }
            }
        }
    }

    deinit { watcher.cancel() }

    /// The first `event` ("STOP" or "RESUME") seen, in seconds since 1970;
    /// waits up to `within` for it.
    public func time(of event: String, within: Duration = .seconds(2)) async -> Double? {
        let latch = event == "STOP" ? stopped : resumed
        if let time = latch.value { return time }
        return await firstFinished([
            { await latch.wait() },
            {
                try? await Task.sleep(for: within)
                return nil
            },
        ]) ?? nil
    }
}
