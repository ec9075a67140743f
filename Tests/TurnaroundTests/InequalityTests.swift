import Testing
import Turnaround

@Suite("The seed's inequality T_mg ≤ T_cevm + T_o/n ≤ T_cpt")
struct InequalityTests {
    @Test("holds: margins on both sides")
    func holds() throws {
        let model = try exactModel(cpt: 0.4, mg: 0.05, cevm: 0.1, overhead: 2)
        let check = try Turnaround.checkInequality(model, checkpoints: 10)
        #expect(check.holds)
        #expect(close(check.cevm, 0.3))
        #expect(close(check.fixedOverheadShare, 0.2))
        #expect(check.lower.status == .holds)
        #expect(close(try #require(check.lower.margin), 0.25))
        #expect(check.upper.status == .holds)
        #expect(close(try #require(check.upper.margin), 0.1))
        #expect(check.summary.hasSuffix("holds"))
        #expect(check.summary.contains("n = 10"))
    }

    @Test("upper side fails because T_cevm alone exceeds T_cpt: says by how much and why")
    func upperFailsPerCheckpoint() throws {
        let model = try exactModel(cpt: 0.31, mg: 0.05, cevm: 0.42)
        let check = try Turnaround.checkInequality(model, checkpoints: 5)
        #expect(!check.holds)
        #expect(check.lower.status == .holds)
        #expect(check.upper.status == .fails)
        #expect(close(try #require(check.upper.margin), -0.11))
        #expect(
            check.upper.message.contains(
                "CEVM costs 0.420 s per checkpoint, more than stop-and-save's 0.310 s (T_cpt) by 0.110 s"))
        #expect(check.upper.message.contains("competes with the guest for CPU"))
        #expect(check.summary.contains("fails: CEVM costs more than stop-and-save"))
    }

    @Test("upper side fails because T_o over too few checkpoints: names the n from which it holds")
    func upperFailsOverhead() throws {
        let model = try exactModel(cpt: 0.5, mg: 0.05, cevm: 0.25, overhead: 2.9)
        let failing = try Turnaround.checkInequality(model, checkpoints: 5)  // 0.25 + 0.58 > 0.5
        #expect(failing.upper.status == .fails)
        #expect(failing.upper.message.contains("T_o/n"))
        #expect(failing.upper.message.contains("holds from n = 12 on"))  // 2.9 / (0.5 − 0.25) = 11.6
        #expect(try Turnaround.checkInequality(model, checkpoints: 12).holds)
        #expect(try !Turnaround.checkInequality(model, checkpoints: 11).holds)
    }

    @Test("lower side fails: CEVM cheaper than the migration it contains")
    func lowerFails() throws {
        let model = try exactModel(cpt: 0.4, mg: 0.08, cevm: 0.05)
        let check = try Turnaround.checkInequality(model, checkpoints: 3)
        #expect(check.lower.status == .fails)
        #expect(close(try #require(check.lower.margin), -0.03))
        #expect(check.lower.message.contains("less than the 80.0 ms of a plain live migration (T_mg) by 30.0 ms"))
        #expect(check.upper.status == .holds)
        #expect(check.summary.contains("cheaper than the migration it contains"))

        // With T_mg from CEVM's own downtime the message points at the measurement.
        let downtime = try Turnaround.fit(samples: [
            Sample(mechanism: .cevm, guestPause: 0.03, migrationDowntime: 0.05, timeToDurable: 1),
            Sample(mechanism: .stopAndSave, guestPause: 0.4, timeToDurable: 0.5),
        ])
        let d = try Turnaround.checkInequality(downtime, checkpoints: 1)
        #expect(d.lower.status == .fails)
        #expect(d.lower.message.contains("QEMU's reported downtime of the same checkpoints"))
    }

    @Test("within noise is flagged; a missing side is not checked; no T_cevm throws")
    func noiseAndMissing() throws {
        let noisy = try Turnaround.fit(samples: [
            Sample(mechanism: .cevm, guestPause: 0.25, timeToDurable: 1),
            Sample(mechanism: .cevm, guestPause: 0.55, timeToDurable: 1),
            Sample(mechanism: .stopAndSave, guestPause: 0.3, timeToDurable: 1),
            Sample(mechanism: .stopAndSave, guestPause: 0.4, timeToDurable: 1),
        ])
        let check = try Turnaround.checkInequality(noisy, checkpoints: 1)
        #expect(check.upper.status == .fails)
        #expect(check.upper.withinNoise)
        #expect(check.upper.message.contains("within measurement noise"))
        #expect(check.lower.status == .notChecked)
        #expect(check.lower.message.contains("T_mg is missing"))
        #expect(!check.holds)

        let noCevm = try exactModel(cpt: 0.4, mg: 0.05, cevm: nil)
        #expect(throws: TurnaroundError.missingTerm(.tCevm, reason: "no cevm samples")) {
            try Turnaround.checkInequality(noCevm, checkpoints: 1)
        }
        #expect(throws: TurnaroundError.invalidCheckpointCount(field: "checkpoints", value: 0, minimum: 1)) {
            try Turnaround.checkInequality(noisy, checkpoints: 0)
        }
    }
}
