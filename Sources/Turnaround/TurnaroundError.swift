/// Everything the turnaround model refuses, with the offending field and
/// value. Inputs are never trusted: no call traps on any input.
///
/// Field names are paths into the caller's input (`samples[3].guestPause`,
/// `runs[0].checkpoints`, `mtbf`), so a message can point at the record or
/// the flag that holds the bad value.
public enum TurnaroundError: Error, Sendable, Equatable, CustomStringConvertible {
    /// NaN or ±infinity.
    case notFinite(field: String, value: Double)
    /// A duration, size or count below zero.
    case negative(field: String, value: Double)
    /// Zero or less where only a positive value means anything (an interval,
    /// an MTBF, a checkpoint cost for an optimal interval).
    case notPositive(field: String, value: Double)
    /// Outside the range the field can take (a progress rate outside 0...1,
    /// a duration above ``Turnaround/maximumSeconds``).
    case outOfRange(field: String, value: Double, range: ClosedRange<Double>)
    /// A checkpoint count below the minimum the computation needs (n ≥ 1 for
    /// the seed's inequality, which divides by n; n ≥ 0 elsewhere).
    case invalidCheckpointCount(field: String, value: Int, minimum: Int)
    /// `fit` was given no checkpoint samples at all.
    case noSamples
    /// The model lacks a term the computation needs (no samples for that
    /// mechanism); `reason` is the one the fit recorded.
    case missingTerm(Turnaround.Term, reason: String)
    /// `tComp / interval` checkpoints would exceed
    /// ``Turnaround/maximumCheckpoints``.
    case tooManyCheckpoints(computeTime: Double, interval: Double, limit: Int)
    /// The expected turnaround under failures is beyond `Double`'s range: the
    /// MTBF is far below the interval plus checkpoint cost or the restart
    /// time (the run would essentially never finish).
    case expectedTurnaroundOverflows(interval: Double, checkpointCost: Double, mtbf: Double, restart: Double)

    public var description: String {
        switch self {
        case .notFinite(let field, let value):
            "\(field) is \(value), not a finite number"
        case .negative(let field, let value):
            "\(field) is \(value), below zero"
        case .notPositive(let field, let value):
            "\(field) is \(value); it must be above zero"
        case .outOfRange(let field, let value, let range):
            "\(field) is \(value), outside \(range.lowerBound)...\(range.upperBound)"
        case .invalidCheckpointCount(let field, let value, let minimum):
            "\(field) is \(value); it must be at least \(minimum)"
        case .noSamples:
            "no checkpoint samples to fit the model from"
        case .missingTerm(let term, let reason):
            "\(term) is not known: \(reason)"
        case .tooManyCheckpoints(let computeTime, let interval, let limit):
            "a compute time of \(computeTime) s at an interval of \(interval) s needs more than \(limit) checkpoints"
        case .expectedTurnaroundOverflows(let interval, let checkpointCost, let mtbf, let restart):
            "the expected turnaround overflows: an MTBF of \(mtbf) s is far below the interval \(interval) s "
                + "plus checkpoint cost \(checkpointCost) s, or below the restart time \(restart) s"
        }
    }
}

/// Input checks shared by every entry point.
package enum Check {
    /// A finite duration in `0...maximumSeconds`.
    package static func seconds(_ value: Double, _ field: String) throws(TurnaroundError) {
        guard value.isFinite else { throw .notFinite(field: field, value: value) }
        guard value >= 0 else { throw .negative(field: field, value: value) }
        guard value <= Turnaround.maximumSeconds else {
            throw .outOfRange(field: field, value: value, range: 0...Turnaround.maximumSeconds)
        }
    }

    /// A finite duration in `0 < value ≤ maximumSeconds`.
    package static func positiveSeconds(_ value: Double, _ field: String) throws(TurnaroundError) {
        try seconds(value, field)
        guard value > 0 else { throw .notPositive(field: field, value: value) }
    }

    /// A rate in 0...1.
    package static func fraction(_ value: Double, _ field: String) throws(TurnaroundError) {
        guard value.isFinite else { throw .notFinite(field: field, value: value) }
        guard (0...1).contains(value) else { throw .outOfRange(field: field, value: value, range: 0...1) }
    }

    /// A checkpoint count in `minimum...maximumCheckpoints`.
    package static func checkpoints(_ value: Int, _ field: String, minimum: Int) throws(TurnaroundError) {
        guard value >= minimum else {
            throw .invalidCheckpointCount(field: field, value: value, minimum: minimum)
        }
        guard value <= Turnaround.maximumCheckpoints else {
            throw .outOfRange(
                field: field, value: Double(value), range: Double(minimum)...Double(Turnaround.maximumCheckpoints))
        }
    }
}
