import GuestCost
import Testing

private typealias Key = GuestCost.ThreadKey
private typealias Counters = GuestCost.Counters
private typealias Sweep = GuestCost.Sweep

/// A sequence of sweeps of one or more threads, built tick by tick: each
/// thread's run and wait counters advance by what it did in each step.
private struct Recorder {
    var time: Double
    var counters: [Key: Counters] = [:]
    var sweeps: [Sweep] = []

    init(start: Double = 1000) { time = start }

    /// Advances `dt` seconds in which each thread in `run` ran that
    /// fraction of the time and waited `wait` of it; then sweeps every
    /// thread in `present` (default: every thread known).
    mutating func step(_ dt: Double, run: [Key: Double], wait: [Key: Double] = [:], present: Set<Key>? = nil) {
        time += dt
        for (key, fraction) in run {
            var c = counters[key] ?? Counters(runNs: 5_000_000, waitNs: 1_000_000, slices: 10)
            c.runNs += UInt64((fraction * dt * 1e9).rounded())
            c.waitNs += UInt64(((wait[key] ?? 0) * dt * 1e9).rounded())
            c.slices += 1
            counters[key] = c
        }
        let visible = present ?? Set(counters.keys)
        sweeps.append(Sweep(time: time, threads: counters.filter { visible.contains($0.key) }))
    }

    mutating func steps(_ count: Int, _ dt: Double, run: [Key: Double], wait: [Key: Double] = [:], present: Set<Key>? = nil) {
        for _ in 0..<count { step(dt, run: run, wait: wait, present: present) }
    }
}

private let old0 = Key(instance: 0, thread: 4101)
private let old1 = Key(instance: 0, thread: 4102)
private let new0 = Key(instance: 1, thread: 5201)

private func near(_ a: Double, _ b: Double, _ tolerance: Double = 1e-6) -> Bool { abs(a - b) <= tolerance }

@Suite("The host-side cost estimate from vCPU schedstat samples")
struct EstimateTests {
    @Test("schedstat's line parses; anything else does not")
    func parse() {
        #expect(Counters.parse("90304345 83977539 241\n") == Counters(runNs: 90_304_345, waitNs: 83_977_539, slices: 241))
        #expect(Counters.parse("1 2") == nil)
        #expect(Counters.parse("1 2 3 4") == nil)
        #expect(Counters.parse("-1 2 3") == nil)
        #expect(Counters.parse("") == nil)
        #expect(Counters.parse("a b c") == nil)
    }

    @Test("a guest that runs on undisturbed loses nothing")
    func undisturbed() throws {
        var r = Recorder()
        r.steps(20, 0.1, run: [old0: 0.97])
        let start = r.time
        r.steps(30, 0.1, run: [old0: 0.97])
        let e = try GuestCost.estimate(r.sweeps, start: start)
        #expect(near(e.rateBefore, 0.97))
        #expect(near(e.window, 3.0))
        #expect(near(e.lost, 0, 1e-6))
        #expect(e.uncertainty == 0)
        #expect(e.estimator == GuestCost.estimatorName)
        #expect(e.samples == 20 + 30)
    }

    @Test("a pause of the whole VM is lost whole, at any prior rate")
    func pausedDuringWindow() throws {
        for rate in [1.0, 0.5, 0.1] {
            var r = Recorder()
            r.steps(20, 0.1, run: [old0: rate])
            let start = r.time
            r.steps(2, 0.1, run: [old0: rate])
            r.steps(4, 0.1, run: [old0: 0])  // stopped 0.4 s
            r.steps(4, 0.1, run: [old0: rate])
            let e = try GuestCost.estimate(r.sweeps, start: start)
            #expect(near(e.lost, 0.4, 1e-6), "rate \(rate): lost \(e.lost)")
            #expect(near(e.expectedRun, rate * 1.0))
            #expect(near(e.actualRun, rate * 0.6))
        }
    }

    @Test("a VM paused before the checkpoint has no rate: no estimate, with the reason")
    func pausedBefore() {
        var r = Recorder()
        r.steps(20, 0.1, run: [old0: 0])
        let start = r.time
        r.steps(10, 0.1, run: [old0: 0])
        #expect(throws: GuestCost.Error.idleBefore(rate: 0)) { try GuestCost.estimate(r.sweeps, start: start) }
    }

    @Test("a vCPU descheduled by a competing thread: lost run time and the wait show")
    func descheduled() throws {
        var r = Recorder()
        r.steps(20, 0.1, run: [old0: 1.0])
        let start = r.time
        // The pre-copy's threads share the vCPU's CPU: it runs 60 % and waits 40 % for 2 s.
        r.steps(20, 0.1, run: [old0: 0.6], wait: [old0: 0.4])
        r.steps(5, 0.1, run: [old0: 1.0])
        let e = try GuestCost.estimate(r.sweeps, start: start)
        #expect(near(e.lost, 0.8, 1e-6))
        #expect(near(e.waitDuring, 0.8, 1e-6))
        #expect(e.waitRateBefore == 0)
    }

    @Test("a CEVM window: Old_VM's vCPU until the switch-over, New_VM's after, the pause between")
    func instanceChange() throws {
        var r = Recorder()
        r.steps(20, 0.1, run: [old0: 0.95])
        let start = r.time
        // New_VM starts (its vCPU thread idle while the stream comes in): seen from here.
        r.steps(10, 0.1, run: [old0: 0.9, new0: 0])
        // Switch-over: Old_VM stopped, New_VM not yet running, 0.05 s.
        r.step(0.05, run: [old0: 0, new0: 0])
        // New_VM runs; Old_VM, paused for good, is still read until it ends.
        r.steps(5, 0.1, run: [old0: 0, new0: 0.95])
        r.steps(10, 0.1, run: [new0: 0.95], present: [new0])
        let e = try GuestCost.estimate(r.sweeps, start: start)
        // Pre-copy: 1 s at 0.9 of 0.95; pause 0.05 s; then 1.5 s at the prior rate.
        let expected = 1.0 * (1 - 0.9 / 0.95) + 0.05
        #expect(near(e.lost, expected, 1e-6), "lost \(e.lost), expected \(expected)")
        #expect(e.threads == 2)
        // New_VM's thread appeared in the window's first step and Old_VM's
        // vanished after its last sweep: both gaps are unseen time.
        #expect(near(e.uncertainty, 0.2 / 0.95, 1e-6))
    }

    @Test("a thread that vanishes mid-window: its unseen run is bounded, not guessed")
    func threadVanishes() throws {
        var r = Recorder()
        r.steps(20, 0.1, run: [old0: 0.5, old1: 0.5])
        let start = r.time
        r.steps(5, 0.1, run: [old0: 0.5, old1: 0.5])
        // old1 ran 0.05 s more after its last sweep, then ended.
        r.step(0.1, run: [old0: 0.5, old1: 0.5], present: [old0])
        r.steps(4, 0.1, run: [old0: 0.5], present: [old0])
        let e = try GuestCost.estimate(r.sweeps, start: start)
        #expect(near(e.rateBefore, 1.0))
        // Unseen: old1's 0.05 s in the step it vanished, and its 0.05 s per
        // step after (it is gone: the guest lost that vCPU's share).
        #expect(near(e.lost, 0.05 + 0.4 * 0.5, 1e-6))
        #expect(near(e.uncertainty, 0.1, 1e-6))
    }

    @Test("a thread id reused by another thread (its counter goes back) is not a negative run")
    func reusedThreadID() throws {
        var r = Recorder()
        r.steps(20, 0.1, run: [old0: 1])
        let start = r.time
        r.steps(3, 0.1, run: [old0: 1])
        r.counters[old0] = Counters(runNs: 1000, waitNs: 0, slices: 1)
        r.steps(3, 0.1, run: [old0: 1])
        let e = try GuestCost.estimate(r.sweeps, start: start)
        #expect(e.actualRun >= 0)
        #expect(near(e.actualRun, 0.5, 1e-6))
        #expect(near(e.uncertainty, 0.2, 1e-6))
    }

    @Test("clock edge cases: a sweep earlier than the one before, a non-finite time, equal times")
    func clocks() throws {
        var r = Recorder()
        r.steps(20, 0.1, run: [old0: 1])
        let start = r.time
        r.steps(5, 0.1, run: [old0: 1])
        var back = r.sweeps
        back[22].time = back[21].time - 0.001
        #expect(
            catching { () throws(GuestCost.Error) in try GuestCost.estimate(back, start: start) }
                == .clockWentBack(index: 22, from: back[21].time, to: back[22].time))
        var nan = r.sweeps
        nan[3].time = .nan
        #expect(throws: GuestCost.Error.notFinite(index: 3)) { try GuestCost.estimate(nan, start: start) }
        #expect(throws: GuestCost.Error.notFinite(index: -1)) { try GuestCost.estimate(r.sweeps, start: .infinity) }
        // Two sweeps at the same instant (an explicit sweep beside the periodic one) change nothing.
        var twice = r.sweeps
        twice.insert(twice[22], at: 23)
        let a = try GuestCost.estimate(r.sweeps, start: start)
        let b = try GuestCost.estimate(twice, start: start)
        #expect(near(a.lost, b.lost, 1e-12))
        // The request falls between two sweeps: the window opens at the earlier one.
        let between = try GuestCost.estimate(r.sweeps, start: start + 0.05)
        #expect(near(between.window, a.window))
    }

    @Test("too little baseline, or none, or no window: no estimate")
    func notEnough() {
        var r = Recorder()
        r.steps(2, 0.1, run: [old0: 1])
        let start = r.time
        r.steps(5, 0.1, run: [old0: 1])
        #expect(throws: GuestCost.Error.self) { try GuestCost.estimate(r.sweeps, start: start) }
        #expect(throws: GuestCost.Error.notEnoughBaseline(seconds: 0)) { try GuestCost.estimate(r.sweeps, start: 0) }
        var s = Recorder()
        s.steps(20, 0.1, run: [old0: 1])
        #expect(throws: GuestCost.Error.noWindow) { try GuestCost.estimate(s.sweeps, start: s.time) }
        #expect(throws: GuestCost.Error.notEnoughBaseline(seconds: 0)) { try GuestCost.estimate([], start: 0) }
    }

    @Test("only the baseline span before the request sets the rate")
    func baselineSpan() throws {
        var r = Recorder()
        r.steps(30, 0.1, run: [old0: 0.2])  // long ago: slow
        r.steps(20, 0.1, run: [old0: 1.0])  // the 2 s before the request
        let start = r.time
        r.steps(10, 0.1, run: [old0: 1.0])
        let e = try GuestCost.estimate(r.sweeps, start: start)
        #expect(near(e.rateBefore, 1.0, 1e-6))
        #expect(e.baseline > 1.9 - 1e-6 && e.baseline < 2.0 + 1e-6)
        #expect(near(e.lost, 0, 1e-6))
    }

    @Test("a guest that runs more than before gets a negative loss, and a cost of 0")
    func faster() throws {
        var r = Recorder()
        r.steps(20, 0.1, run: [old0: 0.5])
        let start = r.time
        r.steps(10, 0.1, run: [old0: 1.0])
        let e = try GuestCost.estimate(r.sweeps, start: start)
        #expect(near(e.lost, -1.0, 1e-6))
        #expect(e.cost == 0)
    }
}

private func catching(_ body: () throws(GuestCost.Error) -> GuestCost.Estimate) -> GuestCost.Error? {
    do {
        _ = try body()
        return nil
    } catch {
        return error
    }
}
