extension Turnaround {
    /// The seed's expectation `T_mg ≤ T_cevm + T_o/n ≤ T_cpt` at one n.
    public struct InequalityCheck: Sendable, Hashable, Codable {
        /// One side of the inequality.
        public struct Side: Sendable, Hashable, Codable {
            public enum Status: String, Sendable, Hashable, Codable {
                case holds, fails
                /// A term of this side is missing.
                case notChecked = "not-checked"
            }

            public var status: Status
            /// Larger side minus smaller, as the seed orders them: ≥ 0 when
            /// it holds, below 0 by how much it fails; nil when not checked.
            public var margin: Double?
            /// Standard error of `margin` from the terms' standard errors.
            public var standardError: Double?
            /// True when |margin| is within twice its standard error: the
            /// outcome could flip with more measurements.
            public var withinNoise: Bool
            /// What happened, for a person.
            public var message: String
        }

        public var checkpoints: Int
        /// T_mg (nil when missing).
        public var migration: Double?
        /// T_cevm + T_o/n: CEVM's cost per checkpoint at this n.
        public var cevm: Double
        /// T_cevm alone.
        public var cevmTerm: Double
        /// T_o/n: the share of the fixed overhead each checkpoint carries.
        public var fixedOverheadShare: Double
        /// T_cpt (nil when missing).
        public var stopAndSave: Double?
        /// T_mg ≤ T_cevm + T_o/n.
        public var lower: Side
        /// T_cevm + T_o/n ≤ T_cpt.
        public var upper: Side
        /// Both sides checked and holding.
        public var holds: Bool
        /// One line: the chain with values, and the verdict.
        public var summary: String
    }

    /// Checks `T_mg ≤ T_cevm + T_o/n ≤ T_cpt` at `checkpoints` = n ≥ 1.
    /// Throws when T_cevm is missing (nothing to check); a missing T_mg or
    /// T_cpt leaves its side `notChecked`.
    public static func checkInequality(_ model: FittedModel, checkpoints: Int) throws(TurnaroundError)
        -> InequalityCheck
    {
        try Check.checkpoints(checkpoints, "checkpoints", minimum: 1)
        guard let cevmTerm = model.estimate(.tCevm) else {
            throw .missingTerm(.tCevm, reason: model.missingReason(.tCevm) ?? "")
        }
        let n = Double(checkpoints)
        let overhead = model.estimate(.tO)
        let share = (overhead?.seconds ?? 0) / n
        let middle = cevmTerm.seconds + share
        let middleSE = combined(cevmTerm.standardError, overhead?.standardError.map { $0 / n })
        let nText = "n = \(checkpoints)"
        let middleText =
            share > 0
            ? "\(Format.seconds(middle)) per checkpoint at \(nText) (T_cevm \(Format.seconds(cevmTerm.seconds)) "
                + "+ T_o/n \(Format.seconds(share)))"
            : "\(Format.seconds(middle)) per checkpoint"

        // Lower side: T_mg ≤ middle.
        let lower: InequalityCheck.Side
        let mg = model.estimate(.tMg)
        if let mg {
            let margin = middle - mg.seconds
            let se = combined(middleSE, mg.standardError)
            let noise = withinNoise(margin, se)
            if margin >= 0 {
                lower = .init(
                    status: .holds, margin: margin, standardError: se, withinNoise: noise,
                    message: "CEVM's \(Format.seconds(middle)) per checkpoint is at least T_mg "
                        + "\(Format.seconds(mg.seconds)) (margin \(Format.seconds(margin))\(noiseText(noise, se)))")
            } else {
                let fromDowntime = mg.basis == .cevmDowntime
                let cause =
                    fromDowntime
                    ? "T_mg is QEMU's reported downtime of the same checkpoints, so cevm's guest pause (host clock) "
                        + "came out shorter than QEMU's downtime, or the progress lost during the overlap was not measured"
                    : "the plain-migration samples and the CEVM samples were measured under different conditions "
                        + "(guest load, memory size, bandwidth limit), or the CEVM samples lack the overlap's lost progress"
                lower = .init(
                    status: .fails, margin: margin, standardError: se, withinNoise: noise,
                    message: "CEVM costs \(middleText), less than the \(Format.seconds(mg.seconds)) of a plain live "
                        + "migration (T_mg) by \(Format.seconds(-margin))\(noiseText(noise, se)), although a CEVM checkpoint "
                        + "is a live migration plus serialisation: \(cause)")
            }
        } else {
            lower = .init(
                status: .notChecked, margin: nil, standardError: nil, withinNoise: false,
                message: "T_mg ≤ T_cevm + T_o/n not checked: T_mg is missing (\(model.missingReason(.tMg) ?? ""))")
        }

        // Upper side: middle ≤ T_cpt.
        let upper: InequalityCheck.Side
        let cpt = model.estimate(.tCpt)
        if let cpt {
            let margin = cpt.seconds - middle
            let se = combined(middleSE, cpt.standardError)
            let noise = withinNoise(margin, se)
            if margin >= 0 {
                upper = .init(
                    status: .holds, margin: margin, standardError: se, withinNoise: noise,
                    message: "CEVM's \(Format.seconds(middle)) per checkpoint is at most T_cpt "
                        + "\(Format.seconds(cpt.seconds)) (margin \(Format.seconds(margin))\(noiseText(noise, se)))")
            } else {
                let cause: String
                if cevmTerm.seconds >= cpt.seconds {
                    cause =
                        "T_cevm alone exceeds T_cpt: the old side competes with the guest for CPU (affinity policy "
                        + "shared?), or the guest dirties memory faster than the migration converges, or the VM is small "
                        + "enough that stopping it to save is quick"
                } else {
                    // T_o/n ≤ T_cpt − T_cevm  ⇔  n ≥ T_o / (T_cpt − T_cevm).
                    let ratio = ((overhead?.seconds ?? 0) / (cpt.seconds - cevmTerm.seconds)).rounded(.up)
                    let from =
                        ratio <= Double(maximumCheckpoints)
                        ? "it holds from n = \(max(Int(ratio), checkpoints + 1)) on"
                        : "it would take more than \(maximumCheckpoints) checkpoints to hold"
                    cause =
                        "T_cevm alone is below T_cpt, but the fixed overhead T_o = "
                        + "\(Format.seconds(overhead?.seconds ?? 0)) spread over only \(checkpoints) checkpoint(s) "
                        + "tips it; \(from)"
                }
                upper = .init(
                    status: .fails, margin: margin, standardError: se, withinNoise: noise,
                    message:
                        "CEVM costs \(middleText), more than stop-and-save's \(Format.seconds(cpt.seconds)) (T_cpt) "
                        + "by \(Format.seconds(-margin))\(noiseText(noise, se)): \(cause)")
            }
        } else {
            upper = .init(
                status: .notChecked, margin: nil, standardError: nil, withinNoise: false,
                message: "T_cevm + T_o/n ≤ T_cpt not checked: T_cpt is missing (\(model.missingReason(.tCpt) ?? ""))")
        }

        let holds = lower.status == .holds && upper.status == .holds
        let chain =
            "T_mg \(mg.map { Format.seconds($0.seconds) } ?? "?") \(symbol(lower.status, "≤", ">")) "
            + "T_cevm + T_o/n \(Format.seconds(middle)) \(symbol(upper.status, "≤", ">")) "
            + "T_cpt \(cpt.map { Format.seconds($0.seconds) } ?? "?")"
        let verdict: String
        switch (lower.status, upper.status) {
        case (.holds, .holds): verdict = "holds"
        case (.fails, .fails): verdict = "fails on both sides"
        case (.fails, _): verdict = "fails: CEVM is cheaper than the migration it contains"
        case (_, .fails): verdict = "fails: CEVM costs more than stop-and-save"
        default: verdict = "not fully checked"
        }
        return InequalityCheck(
            checkpoints: checkpoints, migration: mg?.seconds, cevm: middle, cevmTerm: cevmTerm.seconds,
            fixedOverheadShare: share, stopAndSave: cpt?.seconds, lower: lower, upper: upper, holds: holds,
            summary: "at \(nText): \(chain): \(verdict)")
    }

    private static func combined(_ a: Double?, _ b: Double?) -> Double? {
        if a == nil && b == nil { return nil }
        let x = a ?? 0
        let y = b ?? 0
        return (x * x + y * y).squareRoot()
    }

    private static func withinNoise(_ margin: Double, _ se: Double?) -> Bool {
        guard let se else { return false }
        return Swift.abs(margin) <= 2 * se
    }

    private static func noiseText(_ noise: Bool, _ se: Double?) -> String {
        guard noise, let se else { return "" }
        return ", within measurement noise: ± \(Format.seconds(se))"
    }

    private static func symbol(_ status: InequalityCheck.Side.Status, _ holds: String, _ fails: String) -> String {
        switch status {
        case .holds: holds
        case .fails: fails
        case .notChecked: "?"
        }
    }
}
