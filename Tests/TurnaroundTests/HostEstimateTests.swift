import Foundation
import Testing
import Turnaround
import TurnaroundReport

@Suite("Samples charged from the host's estimate of the guest's lost progress")
struct HostEstimateTests {
    static func host(_ lost: Double, window: Double = 3) -> Turnaround.HostEstimate {
        Turnaround.HostEstimate(estimator: "schedstat-run-time", lost: lost, window: window, rateBefore: 0.98)
    }

    @Test("the estimate (pause included) replaces the unmeasured overlap: no lower bound")
    func replacesLowerBound() throws {
        let samples = [
            Sample(mechanism: .cevm, guestPause: 0.05, timeToDurable: 2.5, overlap: 2.45, hostEstimate: Self.host(0.35)),
            Sample(mechanism: .cevm, guestPause: 0.07, timeToDurable: 2.0, overlap: 1.93, hostEstimate: Self.host(0.27)),
            Sample(mechanism: .backgroundSnapshot, guestPause: 0.004, timeToDurable: 1.5, overlap: 1.5, hostEstimate: Self.host(1.2)),
        ]
        let model = try Turnaround.fit(samples: samples)
        let cevm = try #require(model.estimate(.tCevm))
        #expect(close(cevm.seconds, (0.35 + 0.27) / 2))
        #expect(close(try #require(cevm.components?.lostProgress.mean), (0.30 + 0.20) / 2))
        #expect(cevm.components?.samplesWithHostEstimate == 2)
        #expect(cevm.components?.samplesWithoutProgress == 0)
        #expect(!cevm.notes.contains { $0.contains("lower bound") })
        #expect(cevm.source.contains("estimated from the host"))
        let bg = try #require(model.estimate(.tBg))
        #expect(close(bg.seconds, 1.2))
        // Ranked by what the guest lost, not by the pause.
        #expect(bg.seconds > cevm.seconds)
    }

    @Test("the guest's own progress wins over the host's estimate; an estimate below the pause charges the pause")
    func precedence() throws {
        let own = Sample(
            mechanism: .cevm, guestPause: 0.05, timeToDurable: 2, overlap: 2, progressDuringOverlap: 0.9,
            hostEstimate: Self.host(1.0))
        #expect(close(own.cost, 0.05 + 0.2))
        let below = Sample(mechanism: .stopAndSave, guestPause: 0.4, timeToDurable: 0.5, hostEstimate: Self.host(0.38))
        #expect(close(below.cost, 0.4))
        let negative = Sample(mechanism: .cevm, guestPause: 0.05, timeToDurable: 2, overlap: 2, hostEstimate: Self.host(-0.3))
        #expect(close(negative.cost, 0.05))
    }

    @Test("a mix: the samples without any measure still make the term a lower bound, and say how many")
    func mixed() throws {
        let model = try Turnaround.fit(samples: [
            Sample(mechanism: .cevm, guestPause: 0.05, timeToDurable: 2.5, overlap: 2.45, hostEstimate: Self.host(0.35)),
            Sample(mechanism: .cevm, guestPause: 0.05, timeToDurable: 2.5, overlap: 2.45),
        ])
        let cevm = try #require(model.estimate(.tCevm))
        #expect(cevm.components?.samplesWithoutProgress == 1)
        #expect(cevm.components?.samplesWithHostEstimate == 1)
        #expect(cevm.notes.contains { $0.contains("1 of 2") && $0.contains("lower bound") })
    }

    @Test("a bad estimate is refused with its field named")
    func validation() {
        let bad: [(Turnaround.HostEstimate, String)] = [
            (.init(estimator: "x", lost: .nan, window: 1, rateBefore: 1), "samples[0].hostEstimate.lost"),
            (.init(estimator: "x", lost: 1, window: -1, rateBefore: 1), "samples[0].hostEstimate.window"),
            (.init(estimator: "x", lost: 1, window: 1, rateBefore: 0), "samples[0].hostEstimate.rateBefore"),
            (.init(estimator: "x", lost: 2e12, window: 1, rateBefore: 1), "samples[0].hostEstimate.lost"),
        ]
        for (estimate, field) in bad {
            do {
                _ = try Turnaround.fit(samples: [Sample(mechanism: .cevm, guestPause: 0.05, timeToDurable: 1, hostEstimate: estimate)])
                Issue.record("accepted \(estimate)")
            } catch {
                #expect("\(error)".contains(field), "\(error)")
            }
        }
    }

    @Test("without plain migrations, T_mg says plainly that no live migration was measured")
    func noRealMigration() throws {
        let model = try Turnaround.fit(samples: [
            Sample(mechanism: .cevm, guestPause: 0.05, migrationDowntime: 0.04, timeToDurable: 2, hostEstimate: Self.host(0.3))
        ])
        let mg = try #require(model.estimate(.tMg))
        #expect(mg.basis == .cevmDowntime)
        #expect(mg.notes.contains { $0.contains("no real live migration was measured") })
    }

    @Test("the SVG shows each mechanism's pause and lost parts and its sample count")
    func svgParts() throws {
        let model = try Turnaround.fit(samples: [
            Sample(mechanism: .cevm, guestPause: 0.05, timeToDurable: 2.5, overlap: 2.45, hostEstimate: Self.host(0.35)),
            Sample(mechanism: .cevm, guestPause: 0.05, timeToDurable: 2.5, overlap: 2.45, hostEstimate: Self.host(0.25)),
            Sample(mechanism: .backgroundSnapshot, guestPause: 0.004, timeToDurable: 1.5, overlap: 1.5, hostEstimate: Self.host(1.2)),
        ])
        let svg = try Turnaround.svg(model, computeTime: 3600)
        #expect(svg.contains(#"class="cost-pause" data-mechanism="cevm""#))
        #expect(svg.contains(#"class="cost-lost" data-mechanism="background-snapshot""#))
        #expect(svg.contains("pause 50.0 ms + lost 0.250 s"))
        #expect(svg.contains("2 samples, 2 host-estimated"))
        #expect(svg.contains("1 sample, 1 host-estimated"))
        // Still a well-formed document.
        _ = try XMLCheck.parse(svg)
    }
}
