import Records
import Turnaround

/// A record's manifest as one sample of the turnaround model: the pause,
/// QEMU's migration figures, the latency and overlap, and the host's
/// estimate of the guest's lost progress when the record has one
/// (`timings.cost`). `cevm report` and the schedule's `--mtbf` both fit
/// from these, so they charge a checkpoint the same cost.
public enum ManifestSample {
    public static func sample(_ m: RecordManifest) -> Turnaround.CheckpointSample? {
        guard let mechanism = Turnaround.Mechanism(rawValue: m.mechanism.rawValue) else { return nil }
        return Turnaround.CheckpointSample(
            mechanism: mechanism, guestPause: m.timings.guestPauseMs / 1000,
            migrationDowntime: m.migration.downtimeMs.map { $0 / 1000 },
            migrationTotal: m.migration.totalTimeMs.map { $0 / 1000 },
            timeToDurable: m.timings.requestToDurableMs / 1000,
            overlap: (m.timings.overlapMs ?? 0) / 1000,
            progressDuringOverlap: nil,
            bytes: m.files.reduce(0) { $0 + $1.size }, hostEstimate: hostEstimate(m.timings.cost))
    }

    /// The manifest's cost as the model's host estimate; nil when absent,
    /// unavailable or not a usable number.
    public static func hostEstimate(_ cost: RecordManifest.Timings.Cost?) -> Turnaround.HostEstimate? {
        guard let cost, let lost = cost.lostMs, let window = cost.windowMs, let rate = cost.rateBefore,
            lost.isFinite, abs(lost) < 1e15, window.isFinite, window >= 0, window < 1e15, rate.isFinite, rate > 0
        else { return nil }
        return Turnaround.HostEstimate(estimator: cost.estimator, lost: lost / 1000, window: window / 1000, rateBefore: rate)
    }
}
