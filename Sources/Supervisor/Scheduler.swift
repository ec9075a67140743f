import Control
import CEVMSystem
import Foundation
import Records
import Turnaround
import VMStore

/// Scheduled checkpoints (`cevm schedule`): the supervisor takes them itself,
/// so they go on without any client connected, and resumes the schedule
/// (kept in the VM's `schedule.json`) when it starts again.
extension Supervisor {
    /// Replaces the schedule (nil: off), persists it and (re)starts the loop.
    func setSchedule(_ options: ScheduleOptions?) async throws {
        if let options {
            do { try options.validate() } catch { throw SupervisorError.badSpec("\(error)") }
            try StoreCoding.write(options, to: paths.schedule)
        } else {
            Files.remove(paths.schedule)
        }
        await startScheduler(options)
    }

    /// Puts `options` in force: the scheduler service stops the previous
    /// loop and starts this one.
    func startScheduler(_ options: ScheduleOptions?) async {
        await state.setSchedule(options)
    }

    /// The persisted schedule, if any (read when the VM starts). One that
    /// cannot be read or is out of range (`StoreCoding` validates it) is
    /// reported in the supervisor log and the status, and ignored: the VM
    /// runs unscheduled rather than failing at every start.
    func storedSchedule() async -> ScheduleOptions? {
        guard Files.exists(paths.schedule) else { return nil }
        do { return try StoreCoding.decode(ScheduleOptions.self, from: paths.schedule) } catch {
            log("schedule: ignored: \(error)")
            await update { $0.message = "the stored schedule was ignored: \(error); set it again with `cevm schedule`" }
            return nil
        }
    }

    /// The loop of one schedule, until cancelled.
    func runSchedule(_ options: ScheduleOptions) async {
        let loop = ScheduleLoop(
            interval: { [self] in scheduleInterval(options) },
            sleep: { seconds in try await Task.sleep(for: .microseconds(Int64((seconds * 1_000_000).rounded()))) },
            attempt: { [self] in await scheduledCheckpoint(options) },
            publish: { [self] interval, reason, delay in
                let due = Timestamp.wallSeconds() + delay
                await update {
                    $0.schedule?.intervalSeconds = interval
                    $0.schedule?.intervalReason = reason
                    $0.schedule?.nextDueAt = Timestamp.format(seconds: Int(due), microseconds: 0)
                }
            })
        await loop.run()
    }

    /// One scheduled checkpoint, then retention; its result goes to the status.
    private func scheduledCheckpoint(_ options: ScheduleOptions) async -> ScheduleLoop.Outcome {
        guard await status.state == .running else { return .skipped }
        var result: ScheduleState.Result
        do {
            let record = try await checkpoint(options.checkpoint)
            result = .init(
                at: Timestamp.now(), ok: true, record: record.id, guestPauseMs: record.manifest.timings.guestPauseMs,
                message: nil, removed: [])
        } catch {
            result = .init(at: Timestamp.now(), ok: false, record: nil, guestPauseMs: nil, message: "\(error)", removed: [])
        }
        if let keep = options.keep {
            do {
                // Records a group names stay: the group restores from them.
                let grouped = Set(GroupStore(root: home.root).list().flatMap { $0.manifest.members.filter { $0.vm == name.value }.map(\.record) })
                result.removed = try await Retention.apply(keep: keep, store: RecordStore(paths: paths), protected: grouped).removed
            } catch {
                result.message = (result.message.map { $0 + "; " } ?? "") + "retention failed: \(error)"
            }
        }
        log("schedule: checkpoint \(result.ok ? "\(result.record ?? "") taken" : "failed: \(result.message ?? "")")"
            + (result.removed.isEmpty ? "" : "; removed \(result.removed.joined(separator: " "))"))
        await update { [result] in
            $0.schedule?.recent.append(result)
            if let count = $0.schedule?.recent.count, count > ScheduleState.recentLimit {
                $0.schedule?.recent.removeFirst(count - ScheduleState.recentLimit)
            }
        }
        return result.ok ? .succeeded : .failed
    }

    /// The interval in force and why. With an MTBF, δ is the measured
    /// per-checkpoint cost of this VM's records of the mechanism; with no
    /// record yet the first checkpoint is taken at once to measure it.
    func scheduleInterval(_ options: ScheduleOptions) -> ScheduleLoop.Interval {
        if let every = options.everySeconds { return .init(seconds: every, reason: "fixed interval (--every)") }
        guard let mtbf = options.mtbfSeconds else { return .init(seconds: 3600, reason: "no interval given") }
        let mechanism = options.checkpoint.mechanism
        // The same samples `cevm report` fits: pause plus the host's estimate of the lost progress.
        let samples = RecordStore(paths: paths).list().compactMap { record -> Turnaround.CheckpointSample? in
            guard record.manifest.mechanism == mechanism else { return nil }
            return ManifestSample.sample(record.manifest)
        }
        guard !samples.isEmpty, let m = Turnaround.Mechanism(rawValue: mechanism.rawValue),
            let model = try? Turnaround.fit(samples: samples, runs: []),
            let delta = try? model.perCheckpointCost(m), delta > 0,
            let choice = try? Turnaround.chooseInterval(checkpointCost: delta, mtbf: mtbf),
            choice.interval.isFinite
        else {
            return .init(
                seconds: ScheduleLoop.measuringDelay,
                reason: "no measured \(mechanism.rawValue) checkpoint of this VM yet: one in \(Int(ScheduleLoop.measuringDelay)) s, to measure its cost",
                measured: false)
        }
        // Within the bounds of a fixed interval, whatever the records held.
        let seconds = min(max(choice.interval, ScheduleOptions.intervalRange.lowerBound), ScheduleOptions.intervalRange.upperBound)
        return .init(
            seconds: seconds,
            reason: "\(choice.formula.rawValue) from δ = \(String(format: "%.3f", delta)) s (\(Self.costBasis(samples))) "
                + "measured over \(samples.count) record(s) and the MTBF: \(choice.reason)")
    }

    /// What δ is made of, in words: the pause alone, or with the host's estimate of the lost progress.
    static func costBasis(_ samples: [Turnaround.CheckpointSample]) -> String {
        let estimated = samples.filter { $0.hostEstimate != nil }.count
        if estimated == samples.count { return "pause + lost progress estimated from the host" }
        if estimated == 0 { return "the pause alone: these records carry no host estimate, a lower bound" }
        return "pause + lost progress estimated from the host in \(estimated) of \(samples.count) record(s), the pause alone in the rest"
    }
}

/// The timing of scheduled checkpoints, apart from what a checkpoint does
/// (so that a test can drive it with a fake clock): wait, attempt, repeat.
/// The wait is the interval in force after a success; after consecutive
/// failures it doubles per failure, from the interval up to
/// `ScheduleBackoff.cap` (or the interval, when that is longer). With an
/// MTBF and nothing measured yet, the first checkpoint comes after
/// `measuringDelay`; a checkpoint that succeeded but still left nothing to
/// measure counts as a failure, so it backs off too.
struct ScheduleLoop: Sendable {
    struct Interval: Sendable, Equatable {
        var seconds: Double
        var reason: String
        /// False while the interval is a stand-in for a measured one.
        var measured = true
    }

    enum Outcome: Sendable, Equatable { case succeeded, failed, skipped }

    /// How soon an MTBF schedule with no measured checkpoint takes its first.
    static let measuringDelay: Double = 5

    var interval: @Sendable () -> Interval
    var sleep: @Sendable (Double) async throws -> Void
    var attempt: @Sendable () async -> Outcome
    var publish: @Sendable (_ interval: Double, _ reason: String, _ delay: Double) async -> Void

    func run() async {
        var backoff = ScheduleBackoff()
        while !Task.isCancelled {
            let current = interval()
            let delay = backoff.delay(interval: current.seconds)
            await publish(current.seconds, backoff.failures == 0 ? current.reason : current.reason + "; \(backoff.failures) failed in a row: next in \(ScheduleOptions.duration(delay))", delay)
            do { try await sleep(delay) } catch { return }
            switch await attempt() {
            case .skipped: break
            case .failed: backoff.failed()
            case .succeeded: if interval().measured { backoff.succeeded() } else { backoff.failed() }
            }
        }
    }
}

/// Exponential backoff of failed scheduled checkpoints, capped.
struct ScheduleBackoff: Sendable, Equatable {
    /// The longest wait after failures (unless the interval is longer).
    static let cap: Double = 3600

    private(set) var failures = 0

    mutating func succeeded() { failures = 0 }
    mutating func failed() { failures += 1 }

    /// Seconds until the next attempt for an interval of `interval` seconds
    /// (never below the shortest interval a schedule may have).
    func delay(interval: Double) -> Double {
        let lowest = ScheduleOptions.intervalRange.lowerBound
        let base = interval.isFinite ? max(interval, lowest) : lowest
        guard failures > 0 else { return base }
        let ceiling = max(Self.cap, base)
        return min(base * Double(1 << min(failures, 30)), ceiling)
    }
}
