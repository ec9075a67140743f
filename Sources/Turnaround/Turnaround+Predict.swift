extension Turnaround {
    /// n for a job of `computeTime` checkpointed every `interval` seconds of
    /// compute: checkpoints at τ, 2τ, … strictly before the job ends (one at
    /// the very end would save a finished job), so
    ///
    ///     n = ⌈T_comp / τ⌉ − 1
    ///
    /// A quotient within 1e-9 (relative) of an integer counts as that
    /// integer, so `600 / (600 / 7)` gives 6, not 7, whatever the rounding.
    public static func checkpointCount(computeTime: Double, interval: Double) throws(TurnaroundError) -> Int {
        try Check.positiveSeconds(computeTime, "computeTime")
        try Check.positiveSeconds(interval, "interval")
        let quotient = computeTime / interval
        guard quotient <= Double(maximumCheckpoints) else {
            throw .tooManyCheckpoints(computeTime: computeTime, interval: interval, limit: maximumCheckpoints)
        }
        let nearest = quotient.rounded()
        let segments = Swift.abs(quotient - nearest) <= 1e-9 * max(1, quotient) ? nearest : quotient.rounded(.up)
        return max(0, Int(segments) - 1)
    }

    /// T_vm for `mechanism`, no failures:
    ///
    ///     T_comp + n·δ            (δ = T_cpt, T_mg, T_bg)
    ///     T_comp + n·T_cevm + T_o (CEVM)
    ///
    /// n = 0 is allowed (a run without checkpoints still pays T_o under CEVM).
    public static func predict(
        _ model: FittedModel, mechanism: Mechanism, computeTime: Double, checkpoints: Int
    ) throws(TurnaroundError) -> Double {
        try Check.positiveSeconds(computeTime, "computeTime")
        try Check.checkpoints(checkpoints, "checkpoints", minimum: 0)
        let delta = try model.perCheckpointCost(mechanism)
        return computeTime + Double(checkpoints) * delta + model.fixedOverhead(mechanism)
    }

    /// T_vm for `mechanism` checkpointed every `interval` seconds of compute,
    /// with n from ``checkpointCount(computeTime:interval:)``.
    public static func predict(
        _ model: FittedModel, mechanism: Mechanism, computeTime: Double, interval: Double
    ) throws(TurnaroundError) -> Double {
        let n = try checkpointCount(computeTime: computeTime, interval: interval)
        return try predict(model, mechanism: mechanism, computeTime: computeTime, checkpoints: n)
    }
}
