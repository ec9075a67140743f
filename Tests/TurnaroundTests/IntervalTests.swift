import Testing
import Turnaround

@Suite("Optimal intervals: closed forms against numeric minima")
struct IntervalTests {
    /// Golden-section minimum of Daly's continuous T_w over 0 < τ < M·(1 + …),
    /// written here independently of the library's bisection.
    static func goldenMinimum(delta: Double, failures: Turnaround.FailureModel, computeTime: Double) throws -> Double {
        let g = (5.0.squareRoot() - 1) / 2
        var a = failures.mtbf * 1e-9
        var b = failures.mtbf * 2
        func f(_ tau: Double) throws -> Double {
            try Turnaround.dalyExpectedTurnaround(
                computeTime: computeTime, interval: tau, checkpointCost: delta, failures: failures)
        }
        var c = b - g * (b - a)
        var d = a + g * (b - a)
        for _ in 0..<300 {
            if try f(c) < f(d) { b = d } else { a = c }
            c = b - g * (b - a)
            d = a + g * (b - a)
        }
        return (a + b) / 2
    }

    @Test(
        "the library's exact optimum is the numeric minimum of Daly's T_w, and Daly's formula is close to it",
        arguments: [(0.5, 3600.0), (2.0, 3600.0), (10.0, 3600.0), (60.0, 3600.0), (300.0, 3600.0), (1.0, 1e6)])
    func dalyAgainstNumeric(delta: Double, mtbf: Double) throws {
        let failures = try Turnaround.FailureModel(mtbf: mtbf, restart: 30)
        let numeric = try Self.goldenMinimum(delta: delta, failures: failures, computeTime: 1e5)
        let exact = try Turnaround.exactOptimalInterval(checkpointCost: delta, mtbf: mtbf)
        #expect(close(exact, numeric, 1e-5), "exact \(exact) numeric \(numeric)")
        // Daly's perturbation series is within a fraction of a percent for
        // small δ/M and within a few percent up to δ/M = 1/12.
        let daly = try Turnaround.dalyInterval(checkpointCost: delta, mtbf: mtbf)
        let tolerance = delta / mtbf < 0.01 ? 0.002 : 0.05
        #expect(abs(daly - exact) / exact < tolerance, "daly \(daly) exact \(exact)")
        // Young is always longer, and further off than Daly.
        let young = try Turnaround.youngInterval(checkpointCost: delta, mtbf: mtbf)
        #expect(young > exact)
        #expect(abs(young - exact) >= abs(daly - exact))
    }

    @Test("the restart time scales T_w but does not move its minimum")
    func restartDoesNotMoveOptimum() throws {
        let a = try Self.goldenMinimum(delta: 5, failures: .init(mtbf: 3600, restart: 0), computeTime: 1e5)
        let b = try Self.goldenMinimum(delta: 5, failures: .init(mtbf: 3600, restart: 600), computeTime: 1e5)
        #expect(close(a, b, 1e-5))
    }

    @Test("the discrete best interval is the brute-force minimum over n", arguments: 0..<25)
    func discreteAgainstBruteForce(seed: Int) throws {
        var rng = SeededGenerator(seed: UInt64(seed) &+ 17)
        let computeTime = Double.random(in: 10...20_000, using: &rng)
        let delta = Double.random(in: 0.5...50, using: &rng)
        let failures = try Turnaround.FailureModel(
            mtbf: Double.random(in: 100...50_000, using: &rng), restart: Double.random(in: 0...120, using: &rng))
        let best = try Turnaround.bestInterval(computeTime: computeTime, checkpointCost: delta, failures: failures)
        var bruteN = 0
        var bruteValue = Double.infinity
        for n in 0...3_000 {
            let tau = computeTime / Double(n + 1)
            let v = try Turnaround.expectedTurnaround(
                computeTime: computeTime, interval: tau, checkpointCost: delta, failures: failures)
            if v < bruteValue {
                bruteValue = v
                bruteN = n
            }
        }
        #expect(close(best.expectedTurnaround, bruteValue, 1e-12), "n \(best.checkpoints) vs brute \(bruteN)")
        #expect(try Turnaround.checkpointCount(computeTime: computeTime, interval: best.interval) == best.checkpoints)
        // No interval between the grid points does better (sampled).
        for k in 1...200 {
            let tau = computeTime * Double(k) / 200
            let v = try Turnaround.expectedTurnaround(
                computeTime: computeTime, interval: tau, checkpointCost: delta, failures: failures)
            #expect(v >= best.expectedTurnaround * (1 - 1e-12))
        }
    }

    @Test("for a long job the discrete optimum lands on Daly's interval")
    func longJobMatchesDaly() throws {
        let failures = try Turnaround.FailureModel(mtbf: 3600, restart: 60)
        let best = try Turnaround.bestInterval(
            computeTime: 1e7, checkpointCost: 2, failures: failures, fixedOverhead: 3)
        let daly = try Turnaround.dalyInterval(checkpointCost: 2, mtbf: 3600)
        #expect(abs(best.interval - best.continuousOptimum) / best.continuousOptimum < 1e-3)
        #expect(abs(best.interval - daly) / daly < 2e-3)
        #expect(best.expectedTurnaround <= best.expectedTurnaroundAtChoice)
        #expect(close(best.failureFreeTurnaround, 1e7 + Double(best.checkpoints) * 2 + 3))
        // Very many checkpoints: the golden-section branch.
        let many = try Turnaround.bestInterval(computeTime: 1e8, checkpointCost: 0.01, failures: .init(mtbf: 100))
        let exact = try Turnaround.exactOptimalInterval(checkpointCost: 0.01, mtbf: 100)
        #expect(abs(many.interval - exact) / exact < 1e-3)
    }

    @Test("Young when the two agree within 1%, Daly otherwise, τ = M past δ = 2M; the reason says why")
    func choice() throws {
        let small = try Turnaround.chooseInterval(checkpointCost: 0.1, mtbf: 86_400)
        #expect(small.formula == .young)
        #expect(small.interval == small.young)
        #expect(small.reason.contains("Young"))
        #expect(small.reason.contains("is small"))
        let large = try Turnaround.chooseInterval(checkpointCost: 60, mtbf: 3600)
        #expect(large.formula == .daly)
        #expect(large.interval == large.daly)
        #expect(large.reason.contains("not small"))
        #expect(large.reason.contains("longer"))
        let huge = try Turnaround.chooseInterval(checkpointCost: 500, mtbf: 100)
        #expect(huge.formula == .daly)
        #expect(huge.interval == 100)
        #expect(huge.reason.contains("twice the MTBF"))
    }
}
