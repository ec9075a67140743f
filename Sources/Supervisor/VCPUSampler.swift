#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import GuestCost
import Records
import Synchronization

/// Samples the run time of the VM's vCPU threads from
/// `/proc/PID/task/TID/schedstat`, so each checkpoint can be charged what
/// it cost the guest (`GuestCost`).
///
/// It samples continuously, every 100 ms, on a thread of its own, and keeps
/// the last few seconds in a ring: a checkpoint's baseline (the rate just
/// before the request) is then already there when the request comes, so
/// no checkpoint waits for one. A read is one small procfs file per vCPU
/// (a few microseconds). While a checkpoint's window is open nothing is
/// dropped (up to a cap, past which every other middle sample goes:
/// the counters are cumulative, so only the bound on unseen run time
/// grows), and the checkpoint adds sweeps of its own at the moments that
/// matter (the request, before Old_VM ends, the end).
final class VCPUSampler: Sendable {
    /// Seconds between two periodic sweeps.
    static let period = 0.1
    /// Seconds of sweeps kept outside a window: more than the baseline.
    static let ringSeconds = 4.0
    /// The most sweeps a window keeps.
    static let windowCap = 20_000
    /// How long the guest must have run on after its resume before the
    /// window may close (so a window never ends at the resume itself).
    static let settle = 0.2

    private struct Tracked: Sendable {
        var pid: Int32
        var threads: [Int32]
    }

    private struct State: Sendable {
        var tracked: [Tracked] = []
        var sweeps: [GuestCost.Sweep] = []
        var windowStart: Double?
        var threadRunning = false
        var stopped = false
    }

    private let state = Mutex(State())

    init() {}

    /// Samples the vCPU threads of process `pid` from now on (replacing
    /// what was tracked for it); starts the sampling thread on first use.
    /// A sweep just before and one just after, so the threads' first
    /// reading leaves no gap in which they could have run unseen.
    func track(pid: Int32, threads: [Int32]) {
        sweepNow()
        defer { sweepNow() }
        let start = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.tracked.removeAll { $0.pid == pid }
            if !threads.isEmpty { state.tracked.append(Tracked(pid: pid, threads: threads)) }
            guard !state.threadRunning else { return false }
            state.threadRunning = true
            return true
        }
        if start {
            let thread = Thread { [self] in loop() }
            thread.name = "cevm vcpu sampler"
            thread.start()
        }
    }

    /// Stops sampling process `pid` (it is about to end), with a sweep just
    /// before and one just after: its threads' last reading leaves no gap.
    func untrack(pid: Int32) {
        sweepNow()
        state.withLock { $0.tracked.removeAll { $0.pid == pid } }
        sweepNow()
    }

    /// Ends the sampling thread (within one period).
    func stop() {
        state.withLock { $0.stopped = true }
    }

    /// Takes one sweep now and keeps it.
    @discardableResult
    func sweepNow() -> GuestCost.Sweep {
        let tracked = state.withLock { $0.tracked }
        let sweep = Self.sweep(tracked)
        state.withLock { Self.keep(sweep, in: &$0) }
        return sweep
    }

    /// Opens a checkpoint's window: a sweep now, whose time is the window's start.
    func openWindow() -> Double {
        let time = sweepNow().time
        state.withLock { $0.windowStart = time }
        return time
    }

    /// Closes the window: waits until `resumed + settle` (monotonic
    /// seconds; nil: no wait), takes a last sweep and returns the estimate
    /// for the manifest, or nil when no window was open.
    func closeWindow(resumed: Double?) async -> RecordManifest.Timings.Cost? {
        if let resumed {
            let wait = resumed + Self.settle - Timestamp.monotonic()
            if wait > 0 { try? await Task.sleep(for: .milliseconds(Int((wait * 1000).rounded(.up)))) }
        }
        sweepNow()
        guard let (sweeps, start) = state.withLock({ state -> ([GuestCost.Sweep], Double)? in
            guard let start = state.windowStart else { return nil }
            state.windowStart = nil
            return (state.sweeps, start)
        }) else { return nil }
        return Self.record(sweeps, start: start)
    }

    /// Forgets an open window (a failed checkpoint).
    func abandonWindow() {
        state.withLock { $0.windowStart = nil }
    }

    /// The manifest's `cost` from sweeps and the window's start.
    static func record(_ sweeps: [GuestCost.Sweep], start: Double) -> RecordManifest.Timings.Cost {
        let baseline = GuestCost.Parameters().baseline
        var cost = RecordManifest.Timings.Cost(estimator: GuestCost.estimatorName, samples: sweeps.filter { $0.time >= start - baseline }.count)
        do {
            let e = try GuestCost.estimate(sweeps, start: start)
            cost.samples = e.samples
            cost.rateBefore = e.rateBefore
            cost.lostMs = e.lost * 1000
            cost.windowMs = e.window * 1000
            cost.baselineMs = e.baseline * 1000
            cost.uncertaintyMs = e.uncertainty * 1000
            cost.waitMs = e.waitDuring * 1000
            cost.threads = e.threads
        } catch {
            cost.unavailable = error.description
        }
        return cost
    }

    private func loop() {
        while true {
            let tracked = state.withLock { $0.stopped ? nil : $0.tracked }
            guard let tracked else { return }
            if !tracked.isEmpty {
                let sweep = Self.sweep(tracked)
                state.withLock { Self.keep(sweep, in: &$0) }
            }
            usleep(useconds_t(Self.period * 1_000_000))
        }
    }

    /// Keeps a sweep: in time order (a sweep read before one already kept
    /// goes where it belongs), the ring trimmed outside a window, thinned
    /// past the cap inside one.
    private static func keep(_ sweep: GuestCost.Sweep, in state: inout State) {
        let at = state.sweeps.lastIndex { $0.time <= sweep.time }.map { $0 + 1 } ?? 0
        state.sweeps.insert(sweep, at: at)
        let horizon = (state.windowStart ?? sweep.time) - ringSeconds
        if let keepFrom = state.sweeps.firstIndex(where: { $0.time >= horizon }), keepFrom > 0 {
            state.sweeps.removeFirst(keepFrom)
        }
        if state.sweeps.count > windowCap { state.sweeps.remove(at: state.sweeps.count / 2) }
    }

    /// Reads every tracked thread's schedstat; one that cannot be read
    /// (ended) is left out.
    private static func sweep(_ tracked: [Tracked]) -> GuestCost.Sweep {
        var threads: [GuestCost.ThreadKey: GuestCost.Counters] = [:]
        for process in tracked {
            for tid in process.threads {
                if let counters = read("/proc/\(process.pid)/task/\(tid)/schedstat") {
                    threads[GuestCost.ThreadKey(instance: Int(process.pid), thread: tid)] = counters
                }
            }
        }
        return GuestCost.Sweep(time: Timestamp.monotonic(), threads: threads)
    }

    private static func read(_ path: String) -> GuestCost.Counters? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return GuestCost.Counters.parse(String(decoding: buffer[0..<count], as: UTF8.self))
    }
}
