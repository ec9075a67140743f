import CEVMSystem
import Records
import Testing
import VMStore

@testable import CEVMBench

/// How `cevm bench turnaround` reads a run's console: the undisturbed rate
/// outside the checkpoint windows, and each checkpoint's overlap and progress.
@Suite struct TurnaroundMeasureTests {
    /// A checkpoint requested at `start` (host seconds), paused from
    /// `start + 0.5` for `pause` seconds, durable `durable` seconds after the request.
    func checkpoint(start: Double, pause: Double, durable: Double, hostLost: Double? = nil) throws -> TurnaroundBenchRunner.CheckpointOutput {
        let name = try VMName("job")
        let spec = VMSpec(
            name: name, memoryMiB: 128, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35",
            boot: .kernel(kernel: "/k", initrd: nil, append: ""), disk: nil, bundledGuest: false)
        let pausedAt = start + 0.5
        var timings = RecordManifest.Timings(
            requestToPauseMs: 500, guestPauseMs: pause * 1000, requestToDurableMs: durable * 1000,
            pausedAt: stamp(pausedAt), resumedAt: stamp(pausedAt + pause))
        if let hostLost {
            var cost = RecordManifest.Timings.Cost(estimator: "schedstat-run-time", samples: 40)
            cost.lostMs = hostLost * 1000
            cost.windowMs = durable * 1000
            cost.rateBefore = 1
            timings.cost = cost
        }
        let manifest = RecordManifest(
            id: "r", vm: name, createdAt: timings.pausedAt, mechanism: .cevm, parent: nil, spec: spec,
            qemu: .init(version: "7.2", package: ""),
            migration: .init(parameters: [:], capabilities: [:], totalTimeMs: nil, downtimeMs: nil, streamBytes: 0),
            timings: timings, files: [], disk: nil)
        return .init(directory: "/records/r", manifest: manifest)
    }

    func stamp(_ seconds: Double) -> String {
        Timestamp.format(seconds: Int(seconds), microseconds: Int(((seconds - seconds.rounded(.down)) * 1e6).rounded()))
    }

    /// Lines every 0.1 s from `t0`: 100 units/s, except 50 units/s inside
    /// `slow`, and none during `stopped` (the guest paused).
    func ticks(t0: Double, until end: Double, slow: ClosedRange<Double>, stopped: ClosedRange<Double>) -> [ConsoleProgress.Tick] {
        var out: [ConsoleProgress.Tick] = []
        var counter = 0.0, t = t0
        while t <= end + 1e-9 {
            out.append((t, counter))
            let next = t + 0.1
            for step in 0..<100 {
                let at = t + Double(step) * 0.001
                if stopped.contains(at) { continue }
                counter += slow.contains(at) ? 0.05 : 0.1
            }
            t = next
        }
        return out
    }

    @Test func rateExcludesCheckpointWindowsAndProgressIsMeasuredInTheOverlap() throws {
        let t0 = 1_800_000_000.0
        // Requested at t0+10: 0.5 s of pre-copy at half speed, a 0.2 s pause,
        // then 1.3 s more at half speed until durable at t0+12.
        let output = try checkpoint(start: t0 + 10, pause: 0.2, durable: 2)
        let ticks = ticks(t0: t0, until: t0 + 30, slow: (t0 + 10)...(t0 + 12), stopped: (t0 + 10.5)...(t0 + 10.7))
        let measured = TurnaroundBenchRunner.measure(ticks: ticks, checkpoints: [(units: 1000, output: output)])
        let rate = try #require(measured.rate)
        #expect(abs(rate - 100) < 0.5, "undisturbed rate \(rate)")
        let c = try #require(measured.checkpoints.first)
        #expect(abs(c.guestPause - 0.2) < 1e-9)
        #expect(abs(c.overlap - 4.8) < 1e-9, "request to 3 s after durable, minus the pause")
        let progress = try #require(c.progressDuringOverlap)
        // 1.8 s at half speed, then 3 s at full: 3.9 of 4.8 s worth of units.
        #expect(abs(progress - 3.9 / 4.8) < 0.01, "\(progress)")
        #expect(abs(c.cost - (0.2 + 4.8 * (1 - progress))) < 1e-9)
        #expect(abs(c.cost - (0.2 + 0.9)) < 0.05, "the pause plus 0.9 s of lost progress: \(c.cost)")
        #expect(c.record == "/records/r")
    }

    @Test func fasterThanTheBaselineIsClampedButReported() throws {
        let t0 = 1_800_000_000.0
        let output = try checkpoint(start: t0 + 10, pause: 0.1, durable: 1)
        // Undisturbed at 100 units/s except "slow" before the window, so the
        // window itself runs above the run's average rate.
        let ticks = ticks(t0: t0, until: t0 + 20, slow: (t0 + 1)...(t0 + 9), stopped: (t0 + 10.5)...(t0 + 10.6))
        let measured = TurnaroundBenchRunner.measure(ticks: ticks, checkpoints: [(units: 1, output: output)])
        let c = try #require(measured.checkpoints.first)
        #expect(c.progressDuringOverlap == 1)
        #expect((c.progressUnclamped ?? 0) > 1)
        #expect(abs(c.cost - 0.1) < 1e-9)
    }

    @Test func theHostEstimateIsComparedWithTheGuestsLossOverTheSameWindow() throws {
        let t0 = 1_800_000_000.0
        // As above: over the host's window (request → durable, 2 s), the
        // guest did 0.5 + 1.3 s at half speed and paused 0.2 s: 90 units
        // where its rate in the 2 s before (100/s) does 200, so it lost 1.1 s.
        let output = try checkpoint(start: t0 + 10, pause: 0.2, durable: 2, hostLost: 1.0)
        let ticks = ticks(t0: t0, until: t0 + 30, slow: (t0 + 10)...(t0 + 12), stopped: (t0 + 10.5)...(t0 + 10.7))
        let c = try #require(TurnaroundBenchRunner.measure(ticks: ticks, checkpoints: [(units: 1000, output: output)]).checkpoints.first)
        #expect(c.hostLost == 1.0)
        #expect(abs((c.guestSameWindow ?? 0) - 1.1) < 0.01, "\(String(describing: c.guestSameWindow))")

        func run(_ label: String, _ pairs: [(host: Double, guest: Double)]) -> TurnaroundBenchReport.Run {
            var base = c
            let taken = pairs.map { pair -> TurnaroundBenchReport.Checkpoint in
                base.hostLost = pair.host
                base.guestSameWindow = pair.guest
                return base
            }
            return .init(label: "\(label), n=2", checkpoints: 2, turnaround: 30, taken: taken)
        }
        let configurations: [TurnaroundBenchRunner.Configuration] = [
            .init(mechanism: .backgroundSnapshot, policy: nil), .init(mechanism: .cevm, policy: .dedicated),
        ]
        // Within 20 %, and within 50 ms of a small loss; ranked alike.
        var targets = TurnaroundBenchRunner.hostEstimateTargets(
            runs: [run("background-snapshot", [(1.1, 1.0), (1.3, 1.2)]), run("cevm (dedicated)", [(0.08, 0.05), (0.06, 0.05)])],
            configurations: configurations)
        #expect(targets.count == 3 && targets.allSatisfy(\.met), "\(targets.map { "\($0.name): \($0.value)" })")
        // 30 % off, and the order reversed.
        targets = TurnaroundBenchRunner.hostEstimateTargets(
            runs: [run("background-snapshot", [(0.7, 1.0), (0.7, 1.0)]), run("cevm (dedicated)", [(0.9, 0.5), (0.9, 0.5)])],
            configurations: configurations)
        #expect(targets.filter { !$0.met }.count == 3, "\(targets.map { "\($0.name): \($0.value) \($0.met)" })")
    }

    @Test func noTicksMeansNothingMeasured() {
        let measured = TurnaroundBenchRunner.measure(ticks: [], checkpoints: [])
        #expect(measured.rate == nil && measured.checkpoints.isEmpty)
    }
}
