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
    func setSchedule(_ options: ScheduleOptions?) throws {
        if let options {
            guard (options.everySeconds == nil) != (options.mtbfSeconds == nil) else {
                throw SupervisorError.badSpec("give either an interval (--every) or an MTBF (--mtbf)")
            }
            if let keep = options.keep, keep < 1 { throw SupervisorError.badSpec("--keep must be at least 1") }
            try StoreCoding.write(options, to: paths.schedule)
        } else {
            Files.remove(paths.schedule)
        }
        startScheduler(options)
    }

    /// Starts the loop for `options` (stopping the previous one).
    func startScheduler(_ options: ScheduleOptions?) {
        let previous = inner.withLock { inner -> Task<Void, Never>? in
            defer { inner.scheduler = nil }
            return inner.scheduler
        }
        previous?.cancel()
        guard let options else {
            update { $0.schedule = nil }
            return
        }
        update { $0.schedule = ScheduleState(summary: options.summary) }
        let task = Task { [self] in await runSchedule(options) }
        inner.withLock { $0.scheduler = task }
    }

    /// The persisted schedule, if any (read when the VM starts).
    func storedSchedule() -> ScheduleOptions? {
        guard Files.exists(paths.schedule) else { return nil }
        do { return try StoreCoding.decode(ScheduleOptions.self, from: paths.schedule) } catch {
            log("schedule: \(paths.schedule) is unreadable (\(error)); no schedule")
            return nil
        }
    }

    private func runSchedule(_ options: ScheduleOptions) async {
        while !Task.isCancelled {
            let (interval, reason) = scheduleInterval(options)
            let due = Timestamp.wallSeconds() + interval
            update {
                $0.schedule?.intervalSeconds = interval
                $0.schedule?.intervalReason = reason
                $0.schedule?.nextDueAt = Timestamp.format(seconds: Int(due), microseconds: 0)
            }
            do { try await Task.sleep(for: .milliseconds(Int(interval * 1000))) } catch { return }
            guard status.state == .running else { continue }
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
                    result.removed = try await Retention.apply(keep: keep, store: RecordStore(paths: paths)).removed
                } catch {
                    result.message = (result.message.map { $0 + "; " } ?? "") + "retention failed: \(error)"
                }
            }
            log("schedule: checkpoint \(result.ok ? "\(result.record ?? "") taken" : "failed: \(result.message ?? "")")"
                + (result.removed.isEmpty ? "" : "; removed \(result.removed.joined(separator: " "))"))
            update {
                $0.schedule?.recent.append(result)
                if let count = $0.schedule?.recent.count, count > ScheduleState.recentLimit {
                    $0.schedule?.recent.removeFirst(count - ScheduleState.recentLimit)
                }
            }
        }
    }

    /// The interval in force and why. With an MTBF, δ is the measured
    /// per-checkpoint cost of this VM's records of the mechanism; with no
    /// record yet the first checkpoint is taken at once to measure it.
    func scheduleInterval(_ options: ScheduleOptions) -> (Double, String) {
        if let every = options.everySeconds { return (every, "fixed interval (--every)") }
        guard let mtbf = options.mtbfSeconds else { return (3600, "no interval given") }
        let mechanism = options.checkpoint.mechanism
        let samples = RecordStore(paths: paths).list().compactMap { record -> Turnaround.CheckpointSample? in
            guard record.manifest.mechanism == mechanism, let m = Turnaround.Mechanism(rawValue: mechanism.rawValue) else { return nil }
            return Turnaround.CheckpointSample(
                mechanism: m, guestPause: record.manifest.timings.guestPauseMs / 1000,
                migrationDowntime: record.manifest.migration.downtimeMs.map { $0 / 1000 },
                timeToDurable: record.manifest.timings.requestToDurableMs / 1000,
                overlap: (record.manifest.timings.overlapMs ?? 0) / 1000)
        }
        guard !samples.isEmpty, let m = Turnaround.Mechanism(rawValue: mechanism.rawValue),
            let model = try? Turnaround.fit(samples: samples, runs: []),
            let delta = try? model.perCheckpointCost(m), delta > 0,
            let choice = try? Turnaround.chooseInterval(checkpointCost: delta, mtbf: mtbf)
        else {
            return (0, "no measured \(mechanism.rawValue) checkpoint of this VM yet: one now, to measure its cost")
        }
        return (choice.interval, "\(choice.formula.rawValue) from δ = \(String(format: "%.3f", delta)) s measured over \(samples.count) record(s) and the MTBF: \(choice.reason)")
    }
}
