extension Turnaround {
    /// Mean and spread of a set of measurements.
    public struct Spread: Sendable, Hashable, Codable {
        public var count: Int
        public var mean: Double
        /// Sample standard deviation (divisor count − 1); nil for one value.
        public var standardDeviation: Double?
        public var minimum: Double
        public var maximum: Double

        /// Standard error of the mean, `standardDeviation / √count`; nil for
        /// one value.
        public var standardError: Double? {
            standardDeviation.map { $0 / Double(count).squareRoot() }
        }

        /// nil for no values. Values are finite and bounded by the callers'
        /// checks, so sums cannot overflow.
        static func of(_ values: [Double]) -> Spread? {
            guard let first = values.first else { return nil }
            var sum = 0.0
            var minimum = first
            var maximum = first
            for v in values {
                sum += v
                minimum = Swift.min(minimum, v)
                maximum = Swift.max(maximum, v)
            }
            let mean = sum / Double(values.count)
            var deviation: Double? = nil
            if values.count > 1 {
                var squares = 0.0
                for v in values { squares += (v - mean) * (v - mean) }
                deviation = (squares / Double(values.count - 1)).squareRoot()
            }
            return Spread(
                count: values.count, mean: mean, standardDeviation: deviation, minimum: minimum, maximum: maximum)
        }
    }

    /// Ordinary least squares of a run's overhead against its checkpoint
    /// count: `T_vm − T_comp = intercept + slope · n`.
    public struct RunRegression: Sendable, Hashable, Codable {
        public var mechanism: Mechanism
        public var runs: Int
        /// The distinct values of n among the runs, ascending.
        public var checkpointCounts: [Int]
        /// Seconds per checkpoint, measured end to end.
        public var slope: Double
        /// Seconds of fixed overhead (for CEVM: the unclamped T_o).
        public var intercept: Double
        /// Standard errors from the residuals; nil with only two runs (no
        /// degree of freedom left).
        public var slopeStandardError: Double?
        public var interceptStandardError: Double?
        /// √(RSS / (runs − 2)); nil with only two runs.
        public var residualStandardDeviation: Double?

        /// nil unless there are at least two distinct n.
        static func fit(_ mechanism: Mechanism, _ runs: [MeasuredRun]) -> RunRegression? {
            let xs = runs.map { Double($0.checkpoints) }
            let ys = runs.map(\.overhead)
            let counts = Array(Set(runs.map(\.checkpoints))).sorted()
            guard counts.count >= 2 else { return nil }
            let k = Double(runs.count)
            let meanX = xs.reduce(0, +) / k
            let meanY = ys.reduce(0, +) / k
            var sxx = 0.0
            var sxy = 0.0
            for (x, y) in zip(xs, ys) {
                sxx += (x - meanX) * (x - meanX)
                sxy += (x - meanX) * (y - meanY)
            }
            // Two distinct n make sxx > 0.
            let slope = sxy / sxx
            let intercept = meanY - slope * meanX
            var slopeSE: Double? = nil
            var interceptSE: Double? = nil
            var sigma: Double? = nil
            if runs.count > 2 {
                var rss = 0.0
                for (x, y) in zip(xs, ys) {
                    let r = y - (intercept + slope * x)
                    rss += r * r
                }
                let s = (rss / (k - 2)).squareRoot()
                sigma = s
                slopeSE = s / sxx.squareRoot()
                interceptSE = s * (1 / k + meanX * meanX / sxx).squareRoot()
            }
            return RunRegression(
                mechanism: mechanism, runs: runs.count, checkpointCounts: counts, slope: slope, intercept: intercept,
                slopeStandardError: slopeSE, interceptStandardError: interceptSE, residualStandardDeviation: sigma)
        }
    }
}
