import Turnaround

typealias Sample = Turnaround.CheckpointSample
typealias Run = Turnaround.MeasuredRun

/// SplitMix64: a seeded generator, so the noisy fits are reproducible.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

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
