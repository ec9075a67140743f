extension Turnaround {
    /// Which closed-form optimum a choice used.
    public enum IntervalFormula: String, Sendable, Hashable, Codable {
        /// Young (1974): τ = √(2δM).
        case young
        /// Daly (2006): the higher-order estimate.
        case daly
    }

    /// A checkpoint interval from a closed form, with both candidates and
    /// the reason for the pick (Docs/turnaround.md, "Young or Daly").
    public struct IntervalChoice: Sendable, Hashable, Codable {
        public var formula: IntervalFormula
        /// The chosen interval, seconds of compute between checkpoints.
        public var interval: Double
        public var young: Double
        public var daly: Double
        public var reason: String
    }

    /// Young's first-order optimum, τ = √(2δM). δ, M > 0.
    public static func youngInterval(checkpointCost: Double, mtbf: Double) throws(TurnaroundError) -> Double {
        try Check.positiveSeconds(checkpointCost, "checkpointCost")
        try Check.positiveSeconds(mtbf, "mtbf")
        return (2 * checkpointCost * mtbf).squareRoot()
    }

    /// Daly's higher-order optimum (Daly 2006):
    ///
    ///     τ = √(2δM)·[1 + ⅓·√(δ/2M) + (1/9)·(δ/2M)] − δ   for δ < 2M
    ///     τ = M                                              for δ ≥ 2M
    public static func dalyInterval(checkpointCost: Double, mtbf: Double) throws(TurnaroundError) -> Double {
        try Check.positiveSeconds(checkpointCost, "checkpointCost")
        try Check.positiveSeconds(mtbf, "mtbf")
        guard checkpointCost < 2 * mtbf else { return mtbf }
        let x = checkpointCost / (2 * mtbf)
        return (2 * checkpointCost * mtbf).squareRoot() * (1 + x.squareRoot() / 3 + x / 9) - checkpointCost
    }

    /// The exact minimiser of Daly's continuous T_w(τ) (which does not
    /// depend on T_comp or R): setting dT_w/dτ = 0 gives
    /// `(1 − τ/M)·e^{(τ+δ)/M} = 1`, i.e. with u = τ/M, d = δ/M,
    /// `ln(1 − u) + u + d = 0`, solved by bisection on 0 < u < 1 (the left
    /// side falls strictly from d to −∞). Both closed forms approximate it.
    public static func exactOptimalInterval(checkpointCost: Double, mtbf: Double) throws(TurnaroundError) -> Double {
        try Check.positiveSeconds(checkpointCost, "checkpointCost")
        try Check.positiveSeconds(mtbf, "mtbf")
        let d = checkpointCost / mtbf
        var lo = 0.0
        var hi = 1.0
        for _ in 0..<2_000 {
            let mid = (lo + hi) / 2
            guard mid > lo, mid < hi else { break }
            if Elementary.log1p(-mid) + mid + d > 0 { lo = mid } else { hi = mid }
        }
        return mtbf * (lo + hi) / 2
    }

    /// Picks Young or Daly for checkpoint cost δ and MTBF M and says why:
    /// Young when the two agree within 1% (δ/M below about 4.5e-4), Daly
    /// otherwise, and Daly's τ = M when δ ≥ 2M. The restart time plays no
    /// part: in Daly's model it scales T_w by e^{R/M} and does not move the
    /// optimum.
    public static func chooseInterval(checkpointCost: Double, mtbf: Double) throws(TurnaroundError) -> IntervalChoice {
        let young = try youngInterval(checkpointCost: checkpointCost, mtbf: mtbf)
        let daly = try dalyInterval(checkpointCost: checkpointCost, mtbf: mtbf)
        let ratio = Format.significant(checkpointCost / mtbf, 2)
        if checkpointCost >= 2 * mtbf {
            return IntervalChoice(
                formula: .daly, interval: daly, young: young, daly: daly,
                reason: "Daly's τ = M = \(Format.seconds(mtbf)): the checkpoint cost \(Format.seconds(checkpointCost)) "
                    + "is at least twice the MTBF, beyond the reach of Daly's expansion and far beyond Young's; "
                    + "checkpointing barely pays off")
        }
        let difference = (young - daly) / daly * 100
        if Swift.abs(difference) <= 1 {
            return IntervalChoice(
                formula: .young, interval: young, young: young, daly: daly,
                reason: "Young's τ = √(2δM) = \(Format.seconds(young)): δ/M = \(ratio) is small enough that Daly's "
                    + "higher-order τ (\(Format.seconds(daly))) is within \(Format.fixed(Swift.abs(difference), 1))%")
        }
        return IntervalChoice(
            formula: .daly, interval: daly, young: young, daly: daly,
            reason: "Daly's higher-order τ = \(Format.seconds(daly)): δ/M = \(ratio) is not small, and Young's "
                + "first-order √(2δM) = \(Format.seconds(young)) would be \(Format.fixed(Swift.abs(difference), 1))% "
                + (young > daly ? "longer" : "shorter"))
    }

    /// Daly's (2006) expected wall-clock time of a job under failures:
    ///
    ///     T_w = M·e^{R/M}·(e^{(τ+δ)/M} − 1)·T_comp/τ
    ///
    /// Assumes exponentially distributed failures (rate 1/M) that can strike
    /// during computation, checkpoint and restart alike; every failure costs
    /// R and then the work since the last checkpoint; the checkpoint is
    /// usable the moment its cost δ is paid; T_comp/τ segments, each
    /// followed by a checkpoint (a continuous count, accurate for τ ≪ T_comp).
    public static func dalyExpectedTurnaround(
        computeTime: Double, interval: Double, checkpointCost: Double, failures: FailureModel
    ) throws(TurnaroundError) -> Double {
        try Check.positiveSeconds(computeTime, "computeTime")
        try Check.positiveSeconds(interval, "interval")
        try Check.seconds(checkpointCost, "checkpointCost")
        let m = failures.mtbf
        let value =
            m * Elementary.exp(failures.restart / m) * Elementary.expm1((interval + checkpointCost) / m)
            * (computeTime / interval)
        return try finite(value, interval, checkpointCost, failures)
    }

    /// The expected turnaround of the schedule cevm runs: n = ⌈T_comp/τ⌉ − 1
    /// checkpoints, n segments of τ each followed by a checkpoint of cost δ,
    /// then a last segment r = T_comp − n·τ with none; each segment costs,
    /// by Daly's per-segment expectation,
    ///
    ///     E = M·e^{R/M}·[n·(e^{(τ+δ)/M} − 1) + (e^{r/M} − 1)] + T_fixed
    ///
    /// `fixedOverhead` (T_o for CEVM) is added once, outside the failure
    /// model. As M → ∞ this tends to the failure-free T_comp + n·δ + T_fixed.
    public static func expectedTurnaround(
        computeTime: Double, interval: Double, checkpointCost: Double, failures: FailureModel, fixedOverhead: Double = 0
    ) throws(TurnaroundError) -> Double {
        try Check.seconds(checkpointCost, "checkpointCost")
        try Check.seconds(fixedOverhead, "fixedOverhead")
        let n = try checkpointCount(computeTime: computeTime, interval: interval)
        let last = max(0, computeTime - Double(n) * interval)
        let m = failures.mtbf
        // n = 0 skips the first term: 0·∞ would be NaN for a huge τ.
        var segments = Elementary.expm1(last / m)
        if n > 0 { segments += Double(n) * Elementary.expm1((interval + checkpointCost) / m) }
        let value = m * Elementary.exp(failures.restart / m) * segments + fixedOverhead
        return try finite(value, interval, checkpointCost, failures)
    }

    /// The interval that minimises ``expectedTurnaround(computeTime:interval:checkpointCost:failures:fixedOverhead:)``,
    /// found numerically, with the closed forms beside it.
    public struct BestInterval: Sendable, Hashable, Codable {
        /// nil when computed from a bare checkpoint cost.
        public var mechanism: Mechanism?
        public var computeTime: Double
        public var checkpointCost: Double
        public var fixedOverhead: Double
        public var mtbf: Double
        public var restart: Double
        /// τ* = T_comp / (n* + 1): equal segments are best for a given n.
        public var interval: Double
        /// n*.
        public var checkpoints: Int
        /// E at τ*.
        public var expectedTurnaround: Double
        /// T_comp + n*·δ + T_fixed: the same schedule without failures.
        public var failureFreeTurnaround: Double
        /// The exact minimiser of Daly's continuous T_w.
        public var continuousOptimum: Double
        /// Young or Daly, and why.
        public var choice: IntervalChoice
        /// E at the chosen closed form's interval: what using it would cost.
        public var expectedTurnaroundAtChoice: Double
    }

    /// Minimises the expected turnaround of cevm's schedule over n.
    ///
    /// For a fixed n, E grows with τ across the whole range of τ that gives
    /// n checkpoints (its derivative is (n/M)·(e^{(τ+δ)/M} − e^{r/M}) > 0
    /// since τ + δ > r there), so the best τ for n is T_comp/(n+1) and the
    /// search is over n alone: every n from n_c/2 to 2·n_c (n_c from the
    /// continuous optimum), or for very large n a golden-section search on
    /// real n and a scan around it.
    public static func bestInterval(
        computeTime: Double, checkpointCost: Double, failures: FailureModel, fixedOverhead: Double = 0
    ) throws(TurnaroundError) -> BestInterval {
        try Check.positiveSeconds(computeTime, "computeTime")
        try Check.positiveSeconds(checkpointCost, "checkpointCost")
        try Check.seconds(fixedOverhead, "fixedOverhead")
        let t = computeTime
        let delta = checkpointCost
        let m = failures.mtbf
        // The factor M·e^{R/M} and T_fixed do not move the minimum.
        // Overflow gives +infinity (never NaN: n = 0 skips the 0·∞ term).
        func segments(_ n: Double) -> Double {
            let tau = t / (n + 1)
            let last = Elementary.expm1(tau / m)
            return n > 0 ? n * Elementary.expm1((tau + delta) / m) + last : last
        }
        let continuous = try exactOptimalInterval(checkpointCost: delta, mtbf: m)
        let nc = max(0, t / continuous - 1)
        let limit = Double(maximumCheckpoints)
        guard nc <= limit / 2 else {
            throw .tooManyCheckpoints(computeTime: t, interval: continuous, limit: maximumCheckpoints)
        }
        let lo = max(0, (nc / 2).rounded(.down) - 2)
        let hi = min(limit, (2 * nc).rounded(.up) + 2)
        var best = 0.0
        var bestValue = Double.infinity
        func consider(_ n: Double) {
            let v = segments(n)
            if v < bestValue {
                best = n
                bestValue = v
            }
        }
        consider(0)
        if hi - lo <= 200_000 {
            var n = lo
            while n <= hi {
                consider(n)
                n += 1
            }
        } else {
            // Golden-section on real n; near-continuous at this scale.
            let g = (5.0.squareRoot() - 1) / 2
            var a = lo
            var b = hi
            var c = b - g * (b - a)
            var d = a + g * (b - a)
            var fc = segments(c)
            var fd = segments(d)
            for _ in 0..<200 where b - a > 1 {
                if fc < fd {
                    b = d
                    d = c
                    fd = fc
                    c = b - g * (b - a)
                    fc = segments(c)
                } else {
                    a = c
                    c = d
                    fc = fd
                    d = a + g * (b - a)
                    fd = segments(d)
                }
            }
            let centre = ((a + b) / 2).rounded()
            var n = max(0, centre - 3)
            while n <= min(limit, centre + 3) {
                consider(n)
                n += 1
            }
        }
        let n = Int(best)
        let interval = t / Double(n + 1)
        let expected = try expectedTurnaround(
            computeTime: t, interval: interval, checkpointCost: delta, failures: failures, fixedOverhead: fixedOverhead)
        let choice = try chooseInterval(checkpointCost: delta, mtbf: m)
        let atChoice = try expectedTurnaround(
            computeTime: t, interval: min(choice.interval, Turnaround.maximumSeconds), checkpointCost: delta,
            failures: failures, fixedOverhead: fixedOverhead)
        return BestInterval(
            mechanism: nil, computeTime: t, checkpointCost: delta, fixedOverhead: fixedOverhead, mtbf: m,
            restart: failures.restart, interval: interval, checkpoints: n, expectedTurnaround: expected,
            failureFreeTurnaround: t + Double(n) * delta + fixedOverhead, continuousOptimum: continuous,
            choice: choice, expectedTurnaroundAtChoice: atChoice)
    }

    /// ``bestInterval(computeTime:checkpointCost:failures:fixedOverhead:)``
    /// for one mechanism of a fitted model (δ its per-checkpoint term, T_o
    /// for CEVM).
    public static func bestInterval(
        _ model: FittedModel, mechanism: Mechanism, computeTime: Double, failures: FailureModel
    ) throws(TurnaroundError) -> BestInterval {
        let delta = try model.perCheckpointCost(mechanism)
        var best = try bestInterval(
            computeTime: computeTime, checkpointCost: delta, failures: failures,
            fixedOverhead: model.fixedOverhead(mechanism))
        best.mechanism = mechanism
        return best
    }

    private static func finite(
        _ value: Double, _ interval: Double, _ checkpointCost: Double, _ failures: FailureModel
    ) throws(TurnaroundError) -> Double {
        guard value.isFinite else {
            throw .expectedTurnaroundOverflows(
                interval: interval, checkpointCost: checkpointCost, mtbf: failures.mtbf, restart: failures.restart)
        }
        return value
    }
}
