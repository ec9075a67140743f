extension Turnaround {
    /// One measured checkpoint: what the guest lost, and what the host saw.
    /// Seconds throughout, measured on the host's monotonic clock.
    ///
    /// The model charges each checkpoint its **guest-visible cost**
    ///
    ///     cost = guestPause + overlap · (1 − progressDuringOverlap)
    ///
    /// (Docs/turnaround.md, "Per-checkpoint cost").
    public struct CheckpointSample: Sendable, Hashable, Codable {
        public var mechanism: Mechanism
        /// How long the guest did not run at all (the record manifest's
        /// `guestPauseMs` / 1000).
        public var guestPause: Double
        /// QEMU's `query-migrate` downtime, when the checkpoint migrated.
        public var migrationDowntime: Double?
        /// From the request to switch-over (QEMU's `total-time`), when the
        /// checkpoint migrated.
        public var migrationTotal: Double?
        /// From the request to the record being durable.
        public var timeToDurable: Double
        /// Seconds during which the guest ran while checkpoint work went on
        /// beside it: the pre-copy and the old side's serialisation for
        /// CEVM, the write-protected copy for a background snapshot, the
        /// pre-copy for a plain migration; 0 for stop-and-save.
        public var overlap: Double
        /// The guest's progress rate during `overlap`, relative to an
        /// undisturbed run (1 = no slowdown, 0 = no progress). nil when not
        /// measured: the overlap is then charged nothing, so the cost is a
        /// lower bound, and the fit says so.
        public var progressDuringOverlap: Double?
        /// Bytes written for the record (memory stream plus disk record).
        public var bytes: Int64
        /// The guest's lost progress as the host estimated it (the record
        /// manifest's `timings.cost`), used when `progressDuringOverlap`
        /// was not measured by the guest itself.
        public var hostEstimate: HostEstimate?

        public init(
            mechanism: Mechanism, guestPause: Double, migrationDowntime: Double? = nil,
            migrationTotal: Double? = nil, timeToDurable: Double, overlap: Double = 0,
            progressDuringOverlap: Double? = nil, bytes: Int64 = 0, hostEstimate: HostEstimate? = nil
        ) {
            self.hostEstimate = hostEstimate
            self.mechanism = mechanism
            self.guestPause = guestPause
            self.migrationDowntime = migrationDowntime
            self.migrationTotal = migrationTotal
            self.timeToDurable = timeToDurable
            self.overlap = overlap
            self.progressDuringOverlap = progressDuringOverlap
            self.bytes = bytes
        }

        /// Progress the guest lost during the overlap, in seconds of
        /// undisturbed compute: `overlap · (1 − progress)` when the guest
        /// measured its progress; else the host's estimate less the pause
        /// (the estimate covers the whole window, pause included), not
        /// below 0; else 0.
        public var lostProgress: Double {
            if let progress = progressDuringOverlap { return overlap * (1 - progress) }
            if let hostEstimate { return max(0, hostEstimate.lost - guestPause) }
            return 0
        }

        /// The guest-visible cost of this checkpoint: pause plus lost progress.
        public var cost: Double { guestPause + lostProgress }

        /// True when the overlap was not free but its progress rate is unknown.
        var progressUnmeasured: Bool { overlap > 0 && progressDuringOverlap == nil && hostEstimate == nil }

        /// True when the lost progress comes from the host's estimate.
        var lostFromHostEstimate: Bool { progressDuringOverlap == nil && hostEstimate != nil }

        package func validate(_ path: String) throws(TurnaroundError) {
            try Check.seconds(guestPause, "\(path).guestPause")
            if let migrationDowntime { try Check.seconds(migrationDowntime, "\(path).migrationDowntime") }
            if let migrationTotal { try Check.seconds(migrationTotal, "\(path).migrationTotal") }
            try Check.seconds(timeToDurable, "\(path).timeToDurable")
            try Check.seconds(overlap, "\(path).overlap")
            if let progressDuringOverlap { try Check.fraction(progressDuringOverlap, "\(path).progressDuringOverlap") }
            if let hostEstimate { try hostEstimate.validate("\(path).hostEstimate") }
            guard bytes >= 0 else { throw .negative(field: "\(path).bytes", value: Double(bytes)) }
        }
    }

    /// A checkpoint's cost to the guest as the host estimated it, from its
    /// vCPU threads' run time over the checkpoint's window against their
    /// rate before (Docs/turnaround.md, "The host-side estimate").
    public struct HostEstimate: Sendable, Hashable, Codable {
        /// The estimator's name (`schedstat-run-time`).
        public var estimator: String
        /// Seconds of guest progress lost over the window, pause included;
        /// negative when the vCPUs ran more than before.
        public var lost: Double
        /// The window's length.
        public var window: Double
        /// vCPU-seconds per second before the checkpoint.
        public var rateBefore: Double

        public init(estimator: String, lost: Double, window: Double, rateBefore: Double) {
            self.estimator = estimator
            self.lost = lost
            self.window = window
            self.rateBefore = rateBefore
        }

        package func validate(_ path: String) throws(TurnaroundError) {
            guard lost.isFinite else { throw .notFinite(field: "\(path).lost", value: lost) }
            guard Swift.abs(lost) <= Turnaround.maximumSeconds else {
                throw .outOfRange(field: "\(path).lost", value: lost, range: -Turnaround.maximumSeconds...Turnaround.maximumSeconds)
            }
            try Check.seconds(window, "\(path).window")
            guard rateBefore.isFinite else { throw .notFinite(field: "\(path).rateBefore", value: rateBefore) }
            guard rateBefore > 0 else { throw .notPositive(field: "\(path).rateBefore", value: rateBefore) }
        }
    }

    /// One whole measured run of a job, for validation and for T_o.
    public struct MeasuredRun: Sendable, Hashable, Codable {
        public var mechanism: Mechanism
        /// n: how many checkpoints were taken during the run.
        public var checkpoints: Int
        /// T_vm: the measured turnaround, start to the job's end.
        public var turnaround: Double
        /// T_comp: the same job measured undisturbed (no checkpoint, not
        /// under cevm's disk manager).
        public var computeTime: Double
        /// The checkpoint interval the run used, if it used a fixed one;
        /// only the plot reads it (nil: plotted at `computeTime / (n + 1)`).
        public var interval: Double?

        public init(
            mechanism: Mechanism, checkpoints: Int, turnaround: Double, computeTime: Double, interval: Double? = nil
        ) {
            self.mechanism = mechanism
            self.checkpoints = checkpoints
            self.turnaround = turnaround
            self.computeTime = computeTime
            self.interval = interval
        }

        /// T_vm − T_comp: what checkpointing (and running under cevm) added.
        public var overhead: Double { turnaround - computeTime }

        /// The interval the plot places the run at.
        package var plottedInterval: Double { interval ?? computeTime / Double(checkpoints + 1) }

        package func validate(_ path: String) throws(TurnaroundError) {
            try Check.checkpoints(checkpoints, "\(path).checkpoints", minimum: 0)
            try Check.seconds(turnaround, "\(path).turnaround")
            try Check.positiveSeconds(computeTime, "\(path).computeTime")
            if let interval { try Check.positiveSeconds(interval, "\(path).interval") }
        }
    }

    /// Failures as Daly's model sees them: exponentially distributed with
    /// mean `mtbf`, each followed by a restart of `restart` seconds.
    public struct FailureModel: Sendable, Hashable, Codable {
        /// M: mean time between failures, seconds.
        public let mtbf: Double
        /// R: time from a failure until the job computes again from its last
        /// checkpoint (reboot, restore), seconds.
        public let restart: Double

        public init(mtbf: Double, restart: Double = 0) throws(TurnaroundError) {
            try Check.positiveSeconds(mtbf, "mtbf")
            try Check.seconds(restart, "restart")
            self.mtbf = mtbf
            self.restart = restart
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let mtbf = try container.decode(Double.self, forKey: .mtbf)
            let restart = try container.decode(Double.self, forKey: .restart)
            try self.init(mtbf: mtbf, restart: restart)
        }
    }
}
