extension Turnaround {
    /// Predicted against measured, per run.
    public struct ValidationRow: Sendable, Hashable, Codable {
        public var mechanism: Mechanism
        public var checkpoints: Int
        public var computeTime: Double
        public var measured: Double
        /// nil when the model lacks the mechanism's term (see `note`).
        public var predicted: Double?
        /// predicted − measured.
        public var errorSeconds: Double?
        /// (predicted − measured) / measured · 100.
        public var errorPercent: Double?
        /// (predicted − measured) / (measured − T_comp) · 100: the error
        /// relative to what checkpointing added, which a small overhead on a
        /// long job does not hide; nil when the measured overhead is not
        /// above zero.
        public var overheadErrorPercent: Double?
        /// True when the run fed a fitted term (CEVM runs feed T_o), so the
        /// comparison is not independent.
        public var usedInFit: Bool
        public var note: String?
    }

    /// Error statistics over one mechanism's predicted runs.
    public struct ValidationSummary: Sendable, Hashable, Codable {
        public var mechanism: Mechanism
        public var runs: Int
        public var meanAbsoluteErrorPercent: Double
        public var maximumAbsoluteErrorPercent: Double
        /// Over the runs whose overhead error is defined; nil for none.
        public var meanAbsoluteOverheadErrorPercent: Double?
    }

    public struct Validation: Sendable, Hashable, Codable {
        public var rows: [ValidationRow]
        /// One per mechanism with at least one predicted run.
        public var summaries: [ValidationSummary]
    }

    /// Predicts every run with `model` and compares. A run whose mechanism
    /// the model lacks gets a row without prediction; bad run fields throw.
    public static func validate(_ model: FittedModel, runs: [MeasuredRun]) throws(TurnaroundError) -> Validation {
        for (i, run) in runs.enumerated() { try run.validate("runs[\(i)]") }
        let overheadFitted = model.estimate(.tO)?.basis == .runRegression
        var rows: [ValidationRow] = []
        for run in runs {
            var row = ValidationRow(
                mechanism: run.mechanism, checkpoints: run.checkpoints, computeTime: run.computeTime,
                measured: run.turnaround, predicted: nil, errorSeconds: nil, errorPercent: nil,
                overheadErrorPercent: nil, usedInFit: run.mechanism == .cevm && overheadFitted, note: nil)
            if let reason = model.missingReason(run.mechanism.term) {
                row.note = "no prediction: \(run.mechanism.term) is missing (\(reason))"
            } else {
                let predicted = try predict(
                    model, mechanism: run.mechanism, computeTime: run.computeTime, checkpoints: run.checkpoints)
                let error = predicted - run.turnaround
                row.predicted = predicted
                row.errorSeconds = error
                row.errorPercent = run.turnaround > 0 ? error / run.turnaround * 100 : nil
                row.overheadErrorPercent = run.overhead > 0 ? error / run.overhead * 100 : nil
            }
            rows.append(row)
        }
        var summaries: [ValidationSummary] = []
        for mechanism in Mechanism.allCases {
            let errors = rows.filter { $0.mechanism == mechanism }.compactMap(\.errorPercent).map { Swift.abs($0) }
            guard !errors.isEmpty else { continue }
            let overhead = rows.filter { $0.mechanism == mechanism }.compactMap(\.overheadErrorPercent).map {
                Swift.abs($0)
            }
            summaries.append(
                ValidationSummary(
                    mechanism: mechanism, runs: errors.count,
                    meanAbsoluteErrorPercent: errors.reduce(0, +) / Double(errors.count),
                    maximumAbsoluteErrorPercent: errors.max() ?? 0,
                    meanAbsoluteOverheadErrorPercent: overhead.isEmpty
                        ? nil : overhead.reduce(0, +) / Double(overhead.count)))
        }
        return Validation(rows: rows, summaries: summaries)
    }
}
