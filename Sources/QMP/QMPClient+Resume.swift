extension QMPClient {
    /// QEMU's refusal of `cont` while the source of a completed migration is
    /// still in the `finish-migrate` run state (QEMU says it in no other).
    public static let notFinalizedRefusal = "Migration is not finalized yet"

    /// QMP `cont`, waiting out a migration that QEMU has reported `completed`
    /// but not yet cleaned up: until its cleanup moves the source out of the
    /// `finish-migrate` run state, QEMU refuses `cont` ("Migration is not
    /// finalized yet"). That refusal is retried for at most `finalizeWait`,
    /// also when `query-status` shows the run state already moved on (the
    /// cleanup ran between the refusal and the query: the next `cont` is
    /// taken). Any other refusal is retried only while the run state is
    /// `finish-migrate`; other errors, and any refusal once the wait is
    /// over, are thrown.
    public func resume(finalizeWait: Duration = .seconds(10)) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + finalizeWait
        while true {
            do {
                _ = try await execute("cont")
                return
            } catch let error as QMPError {
                guard case .commandFailed(_, _, let description) = error, clock.now < deadline else { throw error }
                let state = try await execute("query-status")["status"]?.stringValue
                guard state == "finish-migrate" || description == Self.notFinalizedRefusal else { throw error }
                try await Task.sleep(for: .milliseconds(2))
            }
        }
    }
}
