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
/// events that arrive before the subscription are not kept.
struct MigrationWatch: Sendable {
    let qmp: QMPClient
    private let events: AsyncStream<QMPEvent>

    /// Statuses after which a migration does not go on.
    static let terminal: Set<String> = ["completed", "failed", "cancelled"]

    /// Subscribes to `qmp`'s events and turns the `events` capability on.
    static func start(_ qmp: QMPClient) async throws -> MigrationWatch {
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
    func completion(timeout: Duration = .seconds(600), backupPoll: Duration = .seconds(1)) async throws -> JSONValue {
        let qmp = self.qmp
        let events = self.events
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await event in events where event.name == "MIGRATION" {
                    if let status = event.data["status"]?.stringValue, Self.terminal.contains(status) { return }
                }
                // The stream ended: the connection closed (query-migrate below says so).
            }
            group.addTask {
                let deadline = ContinuousClock.now + timeout
                while ContinuousClock.now < deadline {
                    try await Task.sleep(for: backupPoll)
                    if let status = try await qmp.execute("query-migrate")["status"]?.stringValue, Self.terminal.contains(status) {
                        return
                    }
                }
                throw SupervisorError.checkpointFailed("migration not done after \(timeout)")
            }
            defer { group.cancelAll() }
            try await group.next()
        }
        let info = try await qmp.execute("query-migrate")
        switch info["status"]?.stringValue {
        case "completed": return info
        case let status:
            throw SupervisorError.checkpointFailed(
                "migration \(status ?? "in an unknown state"): \(info["error-desc"]?.stringValue ?? "no reason given")")
        }
    }
}
