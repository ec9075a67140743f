extension QMPClient {
    /// QMP `cont`, waiting out a migration that QEMU has reported `completed`
    /// but not yet cleaned up: until its cleanup moves the source out of the
    /// `finish-migrate` run state, QEMU refuses `cont` ("Migration is not
    /// finalized yet"). That refusal is retried (polling `query-status`) for
    /// at most `finalizeWait`; any other error, or the same one once the run
    /// state has moved on or the wait is over, is thrown.
    public func resume(finalizeWait: Duration = .seconds(10)) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + finalizeWait
        while true {
            do {
                _ = try await execute("cont")
                return
            } catch let error as QMPError {
                guard case .commandFailed = error, clock.now < deadline,
                    try await execute("query-status")["status"]?.stringValue == "finish-migrate"
                else { throw error }
                try await Task.sleep(for: .milliseconds(2))
            }
        }
    }
}
