import Testing
import Turnaround

@Suite("Fitting the terms from synthetic samples and runs")
struct FitTests {
    @Test("each per-checkpoint term is the mean of pause + overlap·(1 − progress), with its spread")
    func perCheckpointTerms() throws {
        let samples = [
            Sample(mechanism: .stopAndSave, guestPause: 0.40, timeToDurable: 0.5, bytes: 100),
            Sample(mechanism: .stopAndSave, guestPause: 0.44, timeToDurable: 0.6, bytes: 300),
            // CEVM: pause 0.05 + 2 s of overlap at 90% progress = 0.25; pause 0.07 + 1 s at 80% = 0.27.
            Sample(
                mechanism: .cevm, guestPause: 0.05, migrationDowntime: 0.04, migrationTotal: 0.7, timeToDurable: 2.7,
                overlap: 2, progressDuringOverlap: 0.9),
            Sample(
                mechanism: .cevm, guestPause: 0.07, migrationDowntime: 0.06, migrationTotal: 0.8, timeToDurable: 1.8,
                overlap: 1, progressDuringOverlap: 0.8),
            Sample(
                mechanism: .backgroundSnapshot, guestPause: 0.004, timeToDurable: 1.5, overlap: 1.5,
                progressDuringOverlap: 1),
        ]
        let model = try Turnaround.fit(samples: samples)
        let cpt = try #require(model.estimate(.tCpt))
        #expect(close(cpt.seconds, 0.42))
        #expect(cpt.basis == .samples)
        #expect(cpt.spread?.count == 2)
        #expect(close(try #require(cpt.spread?.standardDeviation), (0.0008).squareRoot()))
        #expect(close(try #require(cpt.standardError), 0.02))
        #expect(cpt.spread?.minimum == 0.40)
        #expect(cpt.spread?.maximum == 0.44)
        #expect(close(try #require(cpt.components?.bytes.mean), 200))
        let cevm = try #require(model.estimate(.tCevm))
        #expect(close(cevm.seconds, 0.26))
        #expect(close(try #require(cevm.components?.lostProgress.mean), 0.2))
        #expect(close(try #require(cevm.components?.timeToDurable.mean), 2.25))
        #expect(cevm.notes.isEmpty)
        // No plain-migration samples: T_mg is the CEVM samples' QEMU downtime, flagged as a lower bound.
        let mg = try #require(model.estimate(.tMg))
        #expect(mg.basis == .cevmDowntime)
        #expect(close(mg.seconds, 0.05))
        #expect(mg.notes.contains { $0.contains("lower bound") })
        #expect(close(try #require(model.estimate(.tBg)).seconds, 0.004))
        // No runs: T_o missing, taken as 0, and said so.
        #expect(model.estimate(.tO) == nil)
        #expect(model.cevmFixedOverhead == 0)
        #expect(model.missing.contains { $0.term == .tO && $0.reason.contains("taken as 0") })
        #expect(model.mechanisms == [.stopAndSave, .migration, .cevm, .backgroundSnapshot])
    }

    @Test("plain-migration samples take precedence over CEVM downtime for T_mg")
    func migrationSamples() throws {
        let model = try Turnaround.fit(samples: [
            Sample(
                mechanism: .migration, guestPause: 0.03, timeToDurable: 0.7, overlap: 0.6, progressDuringOverlap: 0.5),
            Sample(mechanism: .cevm, guestPause: 0.05, migrationDowntime: 0.04, timeToDurable: 2),
        ])
        let mg = try #require(model.estimate(.tMg))
        #expect(mg.basis == .samples)
        #expect(close(mg.seconds, 0.33))
    }

    @Test("missing terms name why; unmeasured progress is flagged as a lower bound")
    func missingAndLowerBounds() throws {
        let model = try Turnaround.fit(samples: [
            Sample(mechanism: .cevm, guestPause: 0.05, timeToDurable: 2, overlap: 1.5),
            Sample(mechanism: .cevm, guestPause: 0.05, timeToDurable: 2, overlap: 1.5, progressDuringOverlap: 0.9),
        ])
        #expect(model.missingReason(.tCpt) == "no stop-and-save samples")
        #expect(model.missingReason(.tBg) == "no background-snapshot samples")
        #expect(
            model.missingReason(.tMg)?.contains("none of the 2 CEVM samples carries QEMU's migration downtime") == true)
        let cevm = try #require(model.estimate(.tCevm))
        #expect(close(cevm.seconds, 0.05 + 0.15 / 2))
        #expect(cevm.components?.samplesWithoutProgress == 1)
        #expect(cevm.notes.contains { $0.contains("1 of 2") && $0.contains("lower bound") })
        #expect(throws: TurnaroundError.missingTerm(.tCpt, reason: "no stop-and-save samples")) {
            try Turnaround.predict(model, mechanism: .stopAndSave, computeTime: 10, checkpoints: 1)
        }
        #expect(throws: TurnaroundError.noSamples) { try Turnaround.fit(samples: []) }
    }

    @Test("T_o is recovered by least squares from noisy runs (seeded)", arguments: [1, 2, 3, 4, 5])
    func overheadRecovery(seed: Int) throws {
        var rng = SeededGenerator(seed: UInt64(seed))
        let trueCost = 0.12
        let trueOverhead = 3.5
        var samples: [Sample] = []
        for _ in 0..<20 {
            let pause = trueCost + Double.random(in: -0.02...0.02, using: &rng)
            samples.append(
                Sample(mechanism: .cevm, guestPause: pause, migrationDowntime: pause * 0.8, timeToDurable: 3))
        }
        var runs: [Run] = []
        for n in [0, 5, 10, 20, 40, 80] {
            for _ in 0..<3 {
                let computeTime = 600 + Double.random(in: -1...1, using: &rng)
                let noise = Double.random(in: -0.5...0.5, using: &rng)
                runs.append(
                    Run(
                        mechanism: .cevm, checkpoints: n,
                        turnaround: computeTime + Double(n) * trueCost + trueOverhead + noise,
                        computeTime: computeTime))
            }
        }
        let model = try Turnaround.fit(samples: samples, runs: runs)
        let overhead = try #require(model.estimate(.tO))
        let se = try #require(overhead.standardError)
        #expect(overhead.basis == .runRegression)
        #expect(abs(overhead.seconds - trueOverhead) < 3 * se, "T_o \(overhead.seconds) ± \(se)")
        #expect(abs(overhead.seconds - trueOverhead) < 0.4)
        let regression = try #require(model.regression(.cevm))
        #expect(regression.checkpointCounts == [0, 5, 10, 20, 40, 80])
        #expect(abs(regression.slope - trueCost) < 3 * (regression.slopeStandardError ?? 0))
        #expect(overhead.source.contains("18 CEVM run(s)"))
        // The validation of the same runs is close, and marked as not independent.
        let validation = try Turnaround.validate(model, runs: runs)
        #expect(validation.rows.allSatisfy { $0.usedInFit })
        #expect(try #require(validation.summaries.first).maximumAbsoluteErrorPercent < 0.5)
    }

    @Test("exact runs give T_o exactly; a negative intercept is clamped to 0 and said so")
    func overheadExactAndClamped() throws {
        let exact = try exactModel(cpt: 0.3, mg: 0.05, cevm: 0.1, overhead: 2)
        #expect(close(try #require(exact.estimate(.tO)).seconds, 2, 1e-9))
        let samples = [Sample(mechanism: .cevm, guestPause: 0.1, timeToDurable: 1)]
        let runs = [1, 2, 3].map { n in
            Run(
                mechanism: .cevm, checkpoints: n, turnaround: 100 + Double(n) * 0.1 - 0.5 + (n == 2 ? 0.01 : 0),
                computeTime: 100)
        }
        let model = try Turnaround.fit(samples: samples, runs: runs)
        let overhead = try #require(model.estimate(.tO))
        #expect(overhead.seconds == 0)
        #expect(model.regression(.cevm).map { $0.intercept < 0 } == true)
        #expect(overhead.notes.contains { $0.contains("below zero") })
    }

    @Test("runs at a single n cannot separate T_o: missing, taken as 0")
    func overheadSingleN() throws {
        let samples = [Sample(mechanism: .cevm, guestPause: 0.1, timeToDurable: 1)]
        let runs = Array(repeating: Run(mechanism: .cevm, checkpoints: 5, turnaround: 103, computeTime: 100), count: 3)
        let model = try Turnaround.fit(samples: samples, runs: runs)
        #expect(model.estimate(.tO) == nil)
        #expect(model.regressions.isEmpty)
        #expect(model.missingReason(.tO)?.contains("n = 5") == true)
    }

    @Test("a run slope that disagrees with the samples' term is noted")
    func slopeCrossCheck() throws {
        var rng = SeededGenerator(seed: 99)
        let samples = (0..<10).map { _ in
            Sample(
                mechanism: .stopAndSave, guestPause: 0.3 + Double.random(in: -0.01...0.01, using: &rng),
                timeToDurable: 0.4)
        }
        // The runs pay 0.5 s per checkpoint, not 0.3.
        let runs = [1, 5, 10, 20, 40].map { n in
            Run(
                mechanism: .stopAndSave, checkpoints: n,
                turnaround: 600 + Double(n) * 0.5 + Double.random(in: -0.05...0.05, using: &rng), computeTime: 600)
        }
        let model = try Turnaround.fit(samples: samples, runs: runs)
        #expect(
            model.notes.contains {
                $0.contains("stop-and-save runs cost") && $0.contains("more than the samples charge")
            })
    }
}
