import Testing
import Turnaround

@Suite("Seed 001's formulas and the interval formulas, against hand-computed values")
struct FormulaTests {
    @Test("T_vm = T_comp + n·δ, and + T_o for CEVM")
    func predictions() throws {
        let model = try exactModel(cpt: 0.3, mg: 0.05, cevm: 0.1, bg: 0.02, overhead: 2)
        #expect(close(try Turnaround.predict(model, mechanism: .stopAndSave, computeTime: 600, checkpoints: 10), 603))
        #expect(close(try Turnaround.predict(model, mechanism: .migration, computeTime: 600, checkpoints: 10), 600.5))
        #expect(close(try Turnaround.predict(model, mechanism: .cevm, computeTime: 600, checkpoints: 10), 603))
        #expect(
            close(
                try Turnaround.predict(model, mechanism: .backgroundSnapshot, computeTime: 600, checkpoints: 10), 600.2)
        )
        // n = 0: no checkpoint, but CEVM's fixed overhead remains.
        #expect(close(try Turnaround.predict(model, mechanism: .cevm, computeTime: 600, checkpoints: 0), 602))
        #expect(close(try Turnaround.predict(model, mechanism: .stopAndSave, computeTime: 600, checkpoints: 0), 600))
        // By interval: τ = 60 s over 600 s gives checkpoints at 60 … 540: n = 9.
        #expect(close(try Turnaround.predict(model, mechanism: .stopAndSave, computeTime: 600, interval: 60), 602.7))
    }

    @Test("n = ⌈T_comp/τ⌉ − 1, exact quotients not pushed up by rounding")
    func checkpointCount() throws {
        #expect(try Turnaround.checkpointCount(computeTime: 10, interval: 3) == 3)  // 3, 6, 9
        #expect(try Turnaround.checkpointCount(computeTime: 10, interval: 5) == 1)  // 5 (10 is the end)
        #expect(try Turnaround.checkpointCount(computeTime: 10, interval: 10) == 0)
        #expect(try Turnaround.checkpointCount(computeTime: 10, interval: 25) == 0)
        #expect(try Turnaround.checkpointCount(computeTime: 0.9, interval: 0.3) == 2)  // 0.9/0.3 = 3.0000000000000004
        #expect(try Turnaround.checkpointCount(computeTime: 0.3, interval: 0.1) == 2)  // 2.9999999999999996
        for k in 1...500 {
            #expect(try Turnaround.checkpointCount(computeTime: 600, interval: 600 / Double(k + 1)) == k)
        }
    }

    @Test("Young τ = √(2δM); Daly's higher-order τ; δ ≥ 2M gives τ = M")
    func closedForms() throws {
        // δ = 2, M = 3600: √(2·2·3600) = 120; δ/2M = 1/3600, √ = 1/60.
        #expect(close(try Turnaround.youngInterval(checkpointCost: 2, mtbf: 3600), 120))
        // 120·(1 + 1/180 + 1/32400) − 2 = 118 + 2/3 + 1/270
        #expect(close(try Turnaround.dalyInterval(checkpointCost: 2, mtbf: 3600), 118 + 2.0 / 3 + 1.0 / 270))
        // δ = 8, M = 1: δ ≥ 2M.
        #expect(try Turnaround.dalyInterval(checkpointCost: 8, mtbf: 1) == 1)
        #expect(try Turnaround.dalyInterval(checkpointCost: 2, mtbf: 1) == 1)
        // Just below 2M: x = δ/2M → 1, τ = √(2δM)·(1 + 1/3 + 1/9) − δ = 2·13/9 − 2 at δ = 2, M = 1.
        #expect(close(try Turnaround.dalyInterval(checkpointCost: 2 - 1e-12, mtbf: 1), 2 * 13.0 / 9 - 2, 1e-9))
    }

    @Test("Daly's T_w: M·e^{R/M}·(e^{(τ+δ)/M} − 1)·T_comp/τ")
    func dalyExpected() throws {
        let e = 2.718281828459045
        let noRestart = try Turnaround.FailureModel(mtbf: 100)
        // M = τ = T = 100, δ = 0, R = 0: 100·(e − 1).
        #expect(
            close(
                try Turnaround.dalyExpectedTurnaround(
                    computeTime: 100, interval: 100, checkpointCost: 0, failures: noRestart), 100 * (e - 1), 1e-12))
        // R = M multiplies by e.
        let restart = try Turnaround.FailureModel(mtbf: 100, restart: 100)
        #expect(
            close(
                try Turnaround.dalyExpectedTurnaround(
                    computeTime: 100, interval: 100, checkpointCost: 0, failures: restart), 100 * e * (e - 1), 1e-12))
        // Two segments of 50 with δ = 50: M·(e^{1} − 1)·2.
        #expect(
            close(
                try Turnaround.dalyExpectedTurnaround(
                    computeTime: 100, interval: 50, checkpointCost: 50, failures: noRestart), 200 * (e - 1), 1e-12))
    }

    @Test("cevm's schedule under failures: n full segments with checkpoints, a last one without")
    func discreteExpected() throws {
        let e = 2.718281828459045
        let failures = try Turnaround.FailureModel(mtbf: 100)
        // T = 200, τ = 100: n = 1, last segment 100. δ = 0: 2·100·(e − 1).
        #expect(
            close(
                try Turnaround.expectedTurnaround(
                    computeTime: 200, interval: 100, checkpointCost: 0, failures: failures), 200 * (e - 1), 1e-12))
        // δ = 10: 100·[(e^{1.1} − 1) + (e − 1)], plus a fixed overhead of 5.
        let e11 = 3.0041660239464334
        #expect(
            close(
                try Turnaround.expectedTurnaround(
                    computeTime: 200, interval: 100, checkpointCost: 10, failures: failures, fixedOverhead: 5),
                100 * ((e11 - 1) + (e - 1)) + 5, 1e-12))
        // T = 250, τ = 100: n = 2, last segment 50.
        let e05 = 1.6487212707001282
        #expect(
            close(
                try Turnaround.expectedTurnaround(
                    computeTime: 250, interval: 100, checkpointCost: 0, failures: failures),
                100 * (2 * (e - 1) + (e05 - 1)), 1e-12))
        // A huge MTBF gives the failure-free model back.
        let rare = try Turnaround.FailureModel(mtbf: 1e11)
        #expect(
            close(
                try Turnaround.expectedTurnaround(
                    computeTime: 600, interval: 60, checkpointCost: 0.5, failures: rare, fixedOverhead: 2),
                600 + 9 * 0.5 + 2, 1e-6))
    }
}
