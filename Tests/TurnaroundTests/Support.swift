import TestSupport
import Turnaround

typealias Sample = Turnaround.CheckpointSample
typealias Run = Turnaround.MeasuredRun

/// SplitMix64 from TestSupport, under the name these tests use.
typealias SeededGenerator = SeededRandom

/// |a − b| ≤ tolerance · max(1, |b|)
func close(_ a: Double, _ b: Double, _ tolerance: Double = 1e-9) -> Bool {
    abs(a - b) <= tolerance * max(1, abs(b))
}

/// A model with exact terms and no spread, built through `fit` from
/// identical samples (so every code path a real fit takes is used).
func exactModel(cpt: Double?, mg: Double?, cevm: Double?, bg: Double? = nil, overhead: Double? = nil) throws
    -> Turnaround.FittedModel
{
    var samples: [Sample] = []
    if let cpt {
        samples += Array(repeating: Sample(mechanism: .stopAndSave, guestPause: cpt, timeToDurable: cpt), count: 3)
    }
    if let mg {
        samples += Array(repeating: Sample(mechanism: .migration, guestPause: mg, timeToDurable: mg), count: 3)
    }
    if let cevm {
        samples += Array(repeating: Sample(mechanism: .cevm, guestPause: cevm, timeToDurable: 2), count: 3)
    }
    if let bg {
        samples += Array(repeating: Sample(mechanism: .backgroundSnapshot, guestPause: bg, timeToDurable: 1), count: 3)
    }
    var runs: [Run] = []
    if let overhead, let cevm {
        for n in [1, 2, 4, 8] {
            runs.append(
                Run(mechanism: .cevm, checkpoints: n, turnaround: 100 + Double(n) * cevm + overhead, computeTime: 100))
        }
    }
    return try Turnaround.fit(samples: samples, runs: runs)
}
