extension Turnaround {
    /// Fits every term the inputs allow (Docs/turnaround.md, "Per-checkpoint
    /// cost" and "T_o").
    ///
    /// - T_cpt, T_mg, T_cevm, T_bg: the mean guest-visible cost
    ///   (`guestPause + overlap·(1 − progress)`) of that mechanism's samples.
    ///   Without plain-migration samples, T_mg is the mean QEMU-reported
    ///   downtime of the CEVM samples (a lower bound, noted).
    /// - T_o: the intercept of least squares of `T_vm − T_comp` against n
    ///   over the CEVM runs, clamped at 0; missing (taken as 0) unless the
    ///   runs span at least two distinct n.
    ///
    /// Every sample and run is checked first; the first bad field throws.
    /// Throws ``TurnaroundError/noSamples`` for an empty `samples`.
    public static func fit(samples: [CheckpointSample], runs: [MeasuredRun] = []) throws(TurnaroundError) -> FittedModel
    {
        for (i, sample) in samples.enumerated() { try sample.validate("samples[\(i)]") }
        for (i, run) in runs.enumerated() { try run.validate("runs[\(i)]") }
        guard !samples.isEmpty else { throw .noSamples }

        var terms: [TermEstimate] = []
        var missing: [MissingTerm] = []
        var notes: [String] = []

        for mechanism in Mechanism.allCases {
            let own = samples.filter { $0.mechanism == mechanism }
            if let estimate = costEstimate(mechanism, own) {
                terms.append(estimate)
            } else if mechanism == .migration {
                let cevm = samples.filter { $0.mechanism == .cevm }
                let downtimes = cevm.compactMap(\.migrationDowntime)
                if let spread = Spread.of(downtimes) {
                    terms.append(
                        TermEstimate(
                            term: .tMg, basis: .cevmDowntime, seconds: spread.mean, standardError: spread.standardError,
                            spread: spread,
                            source: "mean QEMU-reported downtime of \(downtimes.count) CEVM checkpoint(s) "
                                + "(no plain live-migration samples)",
                            notes: [
                                "no real live migration was measured (plain migrations come from `cevm bench "
                                    + "checkpoint`'s controls, not from records): T_mg is CEVM's switch-over "
                                    + "pause alone, without the pre-copy's slowdown, a lower bound on what a "
                                    + "plain live migration costs"
                            ]))
                } else {
                    let reason =
                        cevm.isEmpty
                        ? "no plain live-migration samples and no CEVM samples"
                        : "no plain live-migration samples, and none of the \(cevm.count) CEVM samples carries QEMU's migration downtime"
                    missing.append(MissingTerm(term: .tMg, reason: reason))
                }
            } else {
                missing.append(MissingTerm(term: mechanism.term, reason: "no \(mechanism) samples"))
            }
        }

        var regressions: [RunRegression] = []
        for mechanism in Mechanism.allCases {
            if let regression = RunRegression.fit(mechanism, runs.filter { $0.mechanism == mechanism }) {
                regressions.append(regression)
            }
        }

        let cevmRuns = runs.filter { $0.mechanism == .cevm }
        if let regression = regressions.first(where: { $0.mechanism == .cevm }) {
            terms.append(overheadEstimate(regression))
        } else if cevmRuns.isEmpty {
            missing.append(MissingTerm(term: .tO, reason: "no CEVM runs to estimate it from; taken as 0"))
        } else {
            let n = cevmRuns[0].checkpoints
            missing.append(
                MissingTerm(
                    term: .tO,
                    reason: "the \(cevmRuns.count) CEVM run(s) all took n = \(n) checkpoints: one n cannot separate "
                        + "T_o from n·T_cevm; taken as 0 (measure at two or more n, n = 0 included)"))
        }

        for regression in regressions {
            notes += crossCheck(regression, against: terms.first { $0.term == regression.mechanism.term })
        }

        return FittedModel(
            terms: terms, missing: missing, regressions: regressions, sampleCount: samples.count, runCount: runs.count,
            notes: notes)
    }

    /// The mean guest-visible cost of one mechanism's samples; nil for none.
    static func costEstimate(_ mechanism: Mechanism, _ samples: [CheckpointSample]) -> TermEstimate? {
        guard let cost = Spread.of(samples.map(\.cost)),
            let pause = Spread.of(samples.map(\.guestPause)),
            let lost = Spread.of(samples.map(\.lostProgress)),
            let overlap = Spread.of(samples.map(\.overlap)),
            let durable = Spread.of(samples.map(\.timeToDurable)),
            let bytes = Spread.of(samples.map { Double($0.bytes) })
        else { return nil }
        let unmeasured = samples.filter(\.progressUnmeasured)
        let hostEstimated = samples.filter(\.lostFromHostEstimate).count
        var notes: [String] = []
        if !unmeasured.isEmpty {
            let overlapMean = unmeasured.map(\.overlap).reduce(0, +) / Double(unmeasured.count)
            notes.append(
                "progress during the overlap was not measured in \(unmeasured.count) of \(samples.count) sample(s): "
                    + "their overlap (mean \(Format.seconds(overlapMean))) is charged nothing, "
                    + "so \(mechanism.term) is a lower bound")
        }
        return TermEstimate(
            term: mechanism.term, basis: .samples, seconds: cost.mean, standardError: cost.standardError, spread: cost,
            components: CostComponents(
                guestPause: pause, lostProgress: lost, overlap: overlap, timeToDurable: durable, bytes: bytes,
                samplesWithoutProgress: unmeasured.count, samplesWithHostEstimate: hostEstimated),
            source: "mean guest-visible cost (pause + lost progress) of \(samples.count) \(mechanism) sample(s)"
                + (hostEstimated > 0
                    ? "; lost progress estimated from the host (vCPU run time) in \(hostEstimated) of them" : ""),
            notes: notes)
    }

    /// T_o from the CEVM regression: its intercept, clamped at 0.
    static func overheadEstimate(_ regression: RunRegression) -> TermEstimate {
        var notes: [String] = []
        let intercept = regression.intercept
        if intercept < 0 {
            let se = regression.interceptStandardError.map { " (± \(Format.seconds($0)))" } ?? ""
            notes.append(
                "the fitted intercept \(Format.seconds(intercept))\(se) is below zero; an overhead cannot be, "
                    + "so T_o = 0, the least-squares estimate constrained to T_o ≥ 0")
        }
        if regression.runs == 2 {
            notes.append("two runs leave no degree of freedom: no standard error")
        }
        return TermEstimate(
            term: .tO, basis: .runRegression, seconds: max(0, intercept),
            standardError: regression.interceptStandardError,
            source: "intercept of least squares of T_vm − T_comp against n over \(regression.runs) CEVM run(s) "
                + "at n = \(Format.list(regression.checkpointCounts))",
            notes: notes)
    }

    /// Notes when a regression disagrees with the samples' term beyond twice
    /// the combined standard error, or shows a fixed overhead the seed's
    /// formula for that mechanism has no term for.
    static func crossCheck(_ regression: RunRegression, against estimate: TermEstimate?) -> [String] {
        var notes: [String] = []
        let name = regression.mechanism
        if let estimate, let slopeSE = regression.slopeStandardError {
            let combined = (slopeSE * slopeSE + (estimate.standardError ?? 0) * (estimate.standardError ?? 0))
                .squareRoot()
            let gap = regression.slope - estimate.seconds
            if Swift.abs(gap) > 2 * combined {
                let direction =
                    gap > 0
                    ? "more than the samples charge: a cost they do not see (lost progress not measured, "
                        + "contention after the record is durable)"
                    : "less than the samples charge: the samples overstate the cost (progress underestimated) "
                        + "or the runs differ from the sampled checkpoints"
                notes.append(
                    "\(name) runs cost \(Format.seconds(regression.slope)) per checkpoint end to end "
                        + "(slope ± \(Format.seconds(slopeSE))), \(estimate.term) from samples is "
                        + "\(Format.seconds(estimate.seconds)): \(direction)")
            }
        }
        if name != .cevm, let interceptSE = regression.interceptStandardError,
            Swift.abs(regression.intercept) > 2 * interceptSE
        {
            notes.append(
                "\(name) runs show a fixed overhead of \(Format.seconds(regression.intercept)) "
                    + "(± \(Format.seconds(interceptSE))) that the seed's formula for \(name) has no term for")
        }
        return notes
    }
}
