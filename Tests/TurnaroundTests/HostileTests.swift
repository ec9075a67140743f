import Foundation
import Testing
import Turnaround
import TurnaroundReport

@Suite("Hostile inputs throw errors that name the field and the value")
struct HostileTests {
    static let good = Sample(
        mechanism: .cevm, guestPause: 0.1, migrationDowntime: 0.05, timeToDurable: 1, overlap: 1,
        progressDuringOverlap: 0.9)

    static func field(_ error: TurnaroundError) -> String? {
        switch error {
        case .notFinite(let f, _), .negative(let f, _), .notPositive(let f, _), .outOfRange(let f, _, _),
            .invalidCheckpointCount(let f, _, _):
            f
        default: nil
        }
    }

    /// Runs `body` and expects a ``TurnaroundError`` naming `expected`.
    static func expectField(
        _ expected: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
    ) {
        do {
            try body()
            Issue.record("no error, expected one naming \(expected)", sourceLocation: sourceLocation)
        } catch let error as TurnaroundError {
            #expect(field(error) == expected, "\(error)", sourceLocation: sourceLocation)
            #expect(error.description.contains(expected), sourceLocation: sourceLocation)
        } catch {
            Issue.record("\(error) is not a TurnaroundError", sourceLocation: sourceLocation)
        }
    }

    @Test("bad sample fields")
    func samples() {
        var s = Self.good
        s.guestPause = .nan
        Self.expectField("samples[1].guestPause") { _ = try Turnaround.fit(samples: [Self.good, s]) }
        s = Self.good
        s.guestPause = -0.1
        Self.expectField("samples[0].guestPause") { _ = try Turnaround.fit(samples: [s]) }
        s = Self.good
        s.migrationDowntime = .infinity
        Self.expectField("samples[0].migrationDowntime") { _ = try Turnaround.fit(samples: [s]) }
        s = Self.good
        s.migrationTotal = -1
        Self.expectField("samples[0].migrationTotal") { _ = try Turnaround.fit(samples: [s]) }
        s = Self.good
        s.timeToDurable = -.infinity
        Self.expectField("samples[0].timeToDurable") { _ = try Turnaround.fit(samples: [s]) }
        s = Self.good
        s.overlap = 1e300
        Self.expectField("samples[0].overlap") { _ = try Turnaround.fit(samples: [s]) }
        s = Self.good
        s.progressDuringOverlap = 1.5
        Self.expectField("samples[0].progressDuringOverlap") { _ = try Turnaround.fit(samples: [s]) }
        s = Self.good
        s.progressDuringOverlap = -.nan
        Self.expectField("samples[0].progressDuringOverlap") { _ = try Turnaround.fit(samples: [s]) }
        s = Self.good
        s.bytes = -1
        Self.expectField("samples[0].bytes") { _ = try Turnaround.fit(samples: [s]) }
    }

    @Test("bad run fields")
    func runs() {
        let ok = Run(mechanism: .cevm, checkpoints: 1, turnaround: 10, computeTime: 9)
        var r = ok
        r.checkpoints = -1
        Self.expectField("runs[1].checkpoints") { _ = try Turnaround.fit(samples: [Self.good], runs: [ok, r]) }
        r = ok
        r.turnaround = .nan
        Self.expectField("runs[0].turnaround") {
            _ = try Turnaround.validate(try Turnaround.fit(samples: [Self.good]), runs: [r])
        }
        r = ok
        r.computeTime = 0
        Self.expectField("runs[0].computeTime") { _ = try Turnaround.fit(samples: [Self.good], runs: [r]) }
        r = ok
        r.interval = -3
        Self.expectField("runs[0].interval") { _ = try Turnaround.fit(samples: [Self.good], runs: [r]) }
        r = ok
        r.checkpoints = Int.max
        Self.expectField("runs[0].checkpoints") { _ = try Turnaround.fit(samples: [Self.good], runs: [r]) }
    }

    @Test("bad n, τ, M, R, δ, T_comp")
    func parameters() throws {
        let model = try Turnaround.fit(samples: [Self.good])
        Self.expectField("checkpoints") {
            _ = try Turnaround.predict(model, mechanism: .cevm, computeTime: 10, checkpoints: -1)
        }
        Self.expectField("checkpoints") { _ = try Turnaround.checkInequality(model, checkpoints: 0) }
        Self.expectField("computeTime") {
            _ = try Turnaround.predict(model, mechanism: .cevm, computeTime: -.infinity, checkpoints: 1)
        }
        Self.expectField("interval") {
            _ = try Turnaround.predict(model, mechanism: .cevm, computeTime: 10, interval: 0)
        }
        Self.expectField("interval") { _ = try Turnaround.checkpointCount(computeTime: 10, interval: -1) }
        Self.expectField("interval") { _ = try Turnaround.checkpointCount(computeTime: 10, interval: .nan) }
        Self.expectField("mtbf") { _ = try Turnaround.FailureModel(mtbf: 0) }
        Self.expectField("mtbf") { _ = try Turnaround.FailureModel(mtbf: -5) }
        Self.expectField("mtbf") { _ = try Turnaround.youngInterval(checkpointCost: 1, mtbf: .nan) }
        Self.expectField("restart") { _ = try Turnaround.FailureModel(mtbf: 10, restart: -1) }
        Self.expectField("checkpointCost") { _ = try Turnaround.dalyInterval(checkpointCost: 0, mtbf: 10) }
        Self.expectField("checkpointCost") { _ = try Turnaround.exactOptimalInterval(checkpointCost: -1, mtbf: 10) }
        Self.expectField("inequalityAt[1]") { _ = try Turnaround.report(model, inequalityAt: [3, 0]) }
        Self.expectField("options.width") {
            _ = try Turnaround.svg(model, computeTime: 10, options: .init(width: .nan))
        }
        Self.expectField("options.intervalRange.upperBound") {
            _ = try Turnaround.svg(model, computeTime: 10, options: .init(intervalRange: 5...5))
        }
    }

    @Test("a decoded failure model is checked like a constructed one")
    func decodedFailureModel() throws {
        let good = try JSONDecoder().decode(
            Turnaround.FailureModel.self, from: Data(#"{"mtbf": 3600, "restart": 30}"#.utf8))
        #expect(good == (try Turnaround.FailureModel(mtbf: 3600, restart: 30)))
        #expect(throws: TurnaroundError.notPositive(field: "mtbf", value: 0)) {
            try JSONDecoder().decode(Turnaround.FailureModel.self, from: Data(#"{"mtbf": 0, "restart": 30}"#.utf8))
        }
    }

    @Test("results beyond Double's range throw, counts beyond the limit throw, nothing traps")
    func extremes() throws {
        #expect(
            throws: TurnaroundError.tooManyCheckpoints(
                computeTime: 1e12, interval: 1e-6, limit: Turnaround.maximumCheckpoints)
        ) {
            try Turnaround.checkpointCount(computeTime: 1e12, interval: 1e-6)
        }
        let tiny = try Turnaround.FailureModel(mtbf: 1e-3, restart: 10)
        #expect(
            throws: TurnaroundError.expectedTurnaroundOverflows(
                interval: 100, checkpointCost: 1, mtbf: 1e-3, restart: 10)
        ) {
            try Turnaround.expectedTurnaround(computeTime: 1000, interval: 100, checkpointCost: 1, failures: tiny)
        }
        #expect(throws: TurnaroundError.self) {
            try Turnaround.dalyExpectedTurnaround(computeTime: 1000, interval: 100, checkpointCost: 1, failures: tiny)
        }
        #expect(throws: TurnaroundError.self) {
            try Turnaround.bestInterval(computeTime: 1e12, checkpointCost: 1e-9, failures: .init(mtbf: 1))
        }
        // Extreme but valid values give finite answers.
        #expect(try Turnaround.exactOptimalInterval(checkpointCost: 1e12, mtbf: 1e-6) <= 1e-6)
        #expect(try Turnaround.exactOptimalInterval(checkpointCost: 1e-300, mtbf: 1e12).isFinite)
        #expect(close(try Turnaround.youngInterval(checkpointCost: 1e12, mtbf: 1e12), 1e12 * 2.0.squareRoot()))
        // τ far beyond T_comp: no checkpoint, and no 0·∞ on the way.
        #expect(
            close(
                try Turnaround.expectedTurnaround(
                    computeTime: 100, interval: 1e6, checkpointCost: 1, failures: .init(mtbf: 10)),
                10 * 22025.465794806718, 1e-12))
        let choice = try Turnaround.chooseInterval(checkpointCost: 1e-12, mtbf: 1e12)
        #expect(choice.interval.isFinite && choice.interval > 0)
        // An SVG with a tiny MTBF still renders: curves that overflow leave gaps.
        let model = try exactModel(cpt: 0.3, mg: 0.05, cevm: 0.1)
        let svg = try Turnaround.svg(model, computeTime: 600, failures: .init(mtbf: 50, restart: 5))
        _ = try XMLCheck.parse(svg)
        #expect(!svg.contains("nan"))
    }
}
