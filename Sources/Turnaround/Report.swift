extension Turnaround {
    /// Everything `cevm report` shows, as one Codable value with stable
    /// field names (Docs/turnaround.md, "Report, table, plot"). Encode it
    /// with any encoder; ``table(_:)`` renders it for a terminal.
    public struct Report: Sendable, Hashable, Codable {
        public static let formatName = "cevm-turnaround-report"
        public static let currentVersion = 1

        /// `"cevm-turnaround-report"`.
        public var format: String
        /// 1. A change to the meaning of a field bumps it.
        public var formatVersion: Int
        public var model: FittedModel
        /// The seed's inequality at each n asked for.
        public var inequality: [InequalityCheck]
        public var validation: Validation
        /// Present when an MTBF was given.
        public var schedule: Schedule?
        /// Report-wide remarks (why a section is empty).
        public var notes: [String]
    }

    /// Checkpoint intervals under failures, per mechanism.
    public struct Schedule: Sendable, Hashable, Codable {
        public var mtbf: Double
        public var restart: Double
        /// T_comp; without it only the closed forms are given.
        public var computeTime: Double?
        public var entries: [ScheduleEntry]
    }

    public struct ScheduleEntry: Sendable, Hashable, Codable {
        public var mechanism: Mechanism
        /// δ: the mechanism's per-checkpoint term.
        public var checkpointCost: Double
        public var choice: IntervalChoice
        /// The numeric optimum for T_comp; nil without T_comp.
        public var best: BestInterval?
    }

    /// Builds the report.
    ///
    /// - `inequalityAt`: the n to check the seed's inequality at; empty means
    ///   the distinct n ≥ 1 of the CEVM runs, or 1, 10 and 100 without any.
    /// - `computeTime` and `failures`: with an MTBF, a schedule section
    ///   (closed forms per mechanism; the numeric optimum too with T_comp).
    public static func report(
        _ model: FittedModel, runs: [MeasuredRun] = [], inequalityAt: [Int] = [], computeTime: Double? = nil,
        failures: FailureModel? = nil
    ) throws(TurnaroundError) -> Report {
        if let computeTime { try Check.positiveSeconds(computeTime, "computeTime") }
        for (i, run) in runs.enumerated() { try run.validate("runs[\(i)]") }
        for (i, n) in inequalityAt.enumerated() { try Check.checkpoints(n, "inequalityAt[\(i)]", minimum: 1) }
        var notes: [String] = []

        var checks: [InequalityCheck] = []
        if model.estimate(.tCevm) != nil {
            var ns = inequalityAt
            if ns.isEmpty {
                ns = Array(Set(runs.filter { $0.mechanism == .cevm && $0.checkpoints >= 1 }.map(\.checkpoints)))
                    .sorted()
            }
            if ns.isEmpty { ns = [1, 10, 100] }
            for n in ns { checks.append(try checkInequality(model, checkpoints: n)) }
        } else {
            notes.append("inequality not checked: T_cevm is missing (\(model.missingReason(.tCevm) ?? ""))")
        }

        let validation = try validate(model, runs: runs)
        if runs.isEmpty { notes.append("no measured runs: nothing to validate against") }

        var schedule: Schedule? = nil
        if let failures {
            var entries: [ScheduleEntry] = []
            for mechanism in model.mechanisms {
                let delta = try model.perCheckpointCost(mechanism)
                guard delta > 0 else {
                    notes.append(
                        "\(mechanism): \(mechanism.term) is 0, so no optimal interval (checkpoint continuously)")
                    continue
                }
                let choice = try chooseInterval(checkpointCost: delta, mtbf: failures.mtbf)
                var best: BestInterval? = nil
                if let computeTime {
                    // One mechanism's schedule out of range leaves the others.
                    do {
                        best = try bestInterval(
                            model, mechanism: mechanism, computeTime: computeTime, failures: failures)
                    } catch {
                        notes.append("\(mechanism): no best interval: \(error)")
                    }
                }
                entries.append(ScheduleEntry(mechanism: mechanism, checkpointCost: delta, choice: choice, best: best))
            }
            schedule = Schedule(
                mtbf: failures.mtbf, restart: failures.restart, computeTime: computeTime, entries: entries)
            if computeTime == nil { notes.append("no T_comp given: only the closed-form intervals are shown") }
        }

        return Report(
            format: Report.formatName, formatVersion: Report.currentVersion, model: model, inequality: checks,
            validation: validation, schedule: schedule, notes: notes)
    }
}
