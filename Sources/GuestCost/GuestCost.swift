/// What a checkpoint cost a guest, estimated from the host with no help from
/// the guest: each vCPU thread's run time from
/// `/proc/PID/task/TID/schedstat`, over the checkpoint's window, against the
/// rate at which the vCPUs ran just before it (Docs/turnaround.md, "The
/// host-side estimate").
///
/// Pure: the caller reads the counters (`Sweep`, `Counters.parse`) and hands
/// them over; nothing here reads a file or a clock.
public enum GuestCost {
    /// The estimator's name as manifests and reports write it.
    public static let estimatorName = "schedstat-run-time"

    /// One vCPU thread, known by the instance it belongs to (Old_VM and
    /// New_VM of a CEVM checkpoint are two instances) and its thread id.
    public struct ThreadKey: Sendable, Hashable, Codable, Comparable {
        public var instance: Int
        public var thread: Int32

        public init(instance: Int, thread: Int32) {
            self.instance = instance
            self.thread = thread
        }

        public static func < (a: ThreadKey, b: ThreadKey) -> Bool {
            (a.instance, a.thread) < (b.instance, b.thread)
        }
    }

    /// The three fields of `/proc/PID/task/TID/schedstat` (Linux
    /// `Documentation/scheduler/sched-stats.rst`): nanoseconds spent on a
    /// CPU, nanoseconds spent runnable waiting for one, timeslices run.
    public struct Counters: Sendable, Hashable, Codable {
        public var runNs: UInt64
        public var waitNs: UInt64
        public var slices: UInt64

        public init(runNs: UInt64, waitNs: UInt64, slices: UInt64) {
            self.runNs = runNs
            self.waitNs = waitNs
            self.slices = slices
        }

        /// The file's one line ("123 456 7\n"); nil for anything else.
        public static func parse(_ text: some StringProtocol) -> Counters? {
            let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
            guard fields.count == 3, let run = UInt64(fields[0]), let wait = UInt64(fields[1]), let slices = UInt64(fields[2])
            else { return nil }
            return Counters(runNs: run, waitNs: wait, slices: slices)
        }
    }

    /// One reading of every tracked vCPU thread at one moment of the host's
    /// monotonic clock (seconds). A thread missing from a sweep was not
    /// there to read: not started yet, or ended.
    public struct Sweep: Sendable, Hashable, Codable {
        public var time: Double
        public var threads: [ThreadKey: Counters]

        public init(time: Double, threads: [ThreadKey: Counters]) {
            self.time = time
            self.threads = threads
        }
    }

    /// How the estimate is taken.
    public struct Parameters: Sendable, Hashable, Codable {
        /// How far before the window's start the rate is measured (the
        /// sweeps older than this are ignored).
        public var baseline: Double
        /// The shortest baseline that gives a rate.
        public var minimumBaseline: Double
        /// Below this rate (vCPU-seconds per second) the guest was idle
        /// before the checkpoint: nothing to compare its window with.
        public var minimumRate: Double

        public init(baseline: Double = 2, minimumBaseline: Double = 0.3, minimumRate: Double = 0.02) {
            self.baseline = baseline
            self.minimumBaseline = minimumBaseline
            self.minimumRate = minimumRate
        }
    }

    /// The estimate of one checkpoint's cost. Seconds throughout.
    public struct Estimate: Sendable, Hashable, Codable {
        public var estimator: String
        /// vCPU-seconds the guest's vCPU threads ran per second, summed over
        /// its vCPUs, during the baseline before the window.
        public var rateBefore: Double
        /// How long the baseline was.
        public var baseline: Double
        /// From the window's first sweep (the request) to its last.
        public var window: Double
        /// `rateBefore × window`: what the vCPUs would have run undisturbed.
        public var expectedRun: Double
        /// What they ran, summed over every vCPU thread of every instance.
        public var actualRun: Double
        /// The guest's lost progress: `window − actualRun / rateBefore`,
        /// in seconds of the guest running at its prior rate. Negative when
        /// the vCPUs ran more than before (a guest that was partly idle).
        public var lost: Double
        /// How much of `lost` may be run time the sweeps did not see: a
        /// thread that ended, started or was replaced between two sweeps
        /// may have run for up to that gap (divided by the rate, as `lost`).
        public var uncertainty: Double
        /// Seconds the vCPU threads spent runnable but waiting for a CPU,
        /// during the window and, per second, during the baseline: a
        /// competing thread on their CPU shows here.
        public var waitDuring: Double
        public var waitRateBefore: Double
        /// Sweeps used: baseline and window.
        public var samples: Int
        /// Distinct vCPU threads seen in the window (Old_VM's and New_VM's).
        public var threads: Int

        /// `lost`, not below 0: the cost a turnaround model charges.
        public var cost: Double { max(0, lost) }
    }

    public enum Error: Swift.Error, Sendable, Hashable, CustomStringConvertible {
        /// A sweep's time is NaN or infinite.
        case notFinite(index: Int)
        /// A sweep is earlier than the one before it: not one monotonic clock.
        case clockWentBack(index: Int, from: Double, to: Double)
        /// No sweep at or before the window's start, or too short a span of them.
        case notEnoughBaseline(seconds: Double)
        /// The guest's vCPUs ran less than `minimumRate` before the window.
        case idleBefore(rate: Double)
        /// No sweep after the window's start.
        case noWindow

        public var description: String {
            switch self {
            case .notFinite(let index): return "sweep \(index) has a time that is not finite"
            case .clockWentBack(let index, let from, let to):
                return "sweep \(index) at \(to) s is earlier than the one before it (\(from) s)"
            case .notEnoughBaseline(let seconds):
                return "only \(Self.format(seconds)) of vCPU samples before the checkpoint: no rate to compare with"
            case .idleBefore(let rate):
                return "the guest's vCPUs were idle before the checkpoint (\(Self.format(rate, unit: " CPU"))): nothing it could lose"
            case .noWindow: return "no vCPU sample after the checkpoint's request"
            }
        }

        static func format(_ value: Double, unit: String = " s") -> String {
            let milli = (value * 1000).rounded() / 1000
            return "\(milli)\(unit)"
        }
    }

    /// Estimates the guest's lost progress over the window that starts at
    /// `start` (the request) and ends at the last sweep.
    ///
    /// - The rate: vCPU run time per second between the sweeps of
    ///   `[start − baseline, start]`, the last of which opens the window.
    /// - The window: from that sweep to the last one. The run time is the
    ///   sum, over consecutive sweeps, of each thread's increase between two
    ///   sweeps that both saw it, so Old_VM's threads count until their
    ///   last sweep and New_VM's from their first. A thread that appears
    ///   or vanishes between two sweeps adds their gap to `uncertainty`; a
    ///   counter that goes back (a thread id reused) counts as a thread
    ///   that vanished and another that appeared.
    ///
    /// Sweeps must be in time order (equal times allowed).
    public static func estimate(
        _ sweeps: [Sweep], start: Double, parameters: Parameters = Parameters()
    ) throws(Error) -> Estimate {
        for (i, sweep) in sweeps.enumerated() {
            guard sweep.time.isFinite else { throw .notFinite(index: i) }
            if i > 0, sweep.time < sweeps[i - 1].time {
                throw .clockWentBack(index: i, from: sweeps[i - 1].time, to: sweep.time)
            }
        }
        guard start.isFinite else { throw .notFinite(index: -1) }
        // The window opens at the last sweep at or before the request.
        guard let open = sweeps.lastIndex(where: { $0.time <= start }) else { throw .notEnoughBaseline(seconds: 0) }
        guard let first = sweeps.firstIndex(where: { $0.time >= start - parameters.baseline }), first <= open else {
            throw .notEnoughBaseline(seconds: 0)
        }
        let baselineSpan = sweeps[open].time - sweeps[first].time
        guard baselineSpan >= parameters.minimumBaseline, baselineSpan > 0 else { throw .notEnoughBaseline(seconds: baselineSpan) }
        guard open < sweeps.count - 1 else { throw .noWindow }
        let before = accumulate(sweeps[first...open])
        let rate = before.run / baselineSpan
        guard rate >= parameters.minimumRate else { throw .idleBefore(rate: rate) }
        let during = accumulate(sweeps[open...])
        let window = sweeps[sweeps.count - 1].time - sweeps[open].time
        var seen = Set<ThreadKey>()
        for sweep in sweeps[open...] { seen.formUnion(sweep.threads.keys) }
        return Estimate(
            estimator: estimatorName, rateBefore: rate, baseline: baselineSpan, window: window, expectedRun: rate * window,
            actualRun: during.run, lost: window - during.run / rate, uncertainty: during.unseen / rate,
            waitDuring: during.wait, waitRateBefore: before.wait / baselineSpan, samples: sweeps.count - first,
            threads: seen.count)
    }

    /// Run and wait time over consecutive sweeps, counting each thread
    /// between two sweeps that both saw it; `unseen` adds up the gaps in
    /// which a thread appeared, vanished or was replaced (at most one CPU
    /// each: the most it could have run unseen).
    static func accumulate(_ sweeps: ArraySlice<Sweep>) -> (run: Double, wait: Double, unseen: Double) {
        var run = 0.0, wait = 0.0, unseen = 0.0
        var previous: Sweep?
        for sweep in sweeps {
            defer { previous = sweep }
            guard let previous else { continue }
            let gap = sweep.time - previous.time
            for (key, now) in sweep.threads {
                guard let then = previous.threads[key] else {
                    // Appeared: it may have run before this sweep saw it.
                    unseen += gap
                    continue
                }
                guard now.runNs >= then.runNs, now.waitNs >= then.waitNs else {
                    // A reused thread id: the old thread vanished, a new one appeared.
                    unseen += 2 * gap
                    continue
                }
                run += Double(now.runNs - then.runNs) / 1e9
                wait += Double(now.waitNs - then.waitNs) / 1e9
            }
            for key in previous.threads.keys where sweep.threads[key] == nil {
                // Vanished: it may have run after the last sweep saw it.
                unseen += gap
            }
        }
        return (run, wait, unseen)
    }
}
