extension Turnaround {
    /// One term of the model, with where it came from and how sure it is.
    public struct TermEstimate: Sendable, Hashable, Codable {
        /// What a term was estimated from.
        public enum Basis: String, Sendable, Hashable, Codable {
            /// The mean cost of the mechanism's own checkpoint samples.
            case samples
            /// T_mg from the QEMU-reported downtime of CEVM samples.
            case cevmDowntime = "cevm-downtime"
            /// T_o from the regression over CEVM runs.
            case runRegression = "run-regression"
            /// Set by the caller (for example a cost given on the command line).
            case given
        }

        public var term: Term
        public var basis: Basis
        /// The value the model uses.
        public var seconds: Double
        /// Standard error of `seconds` (of the mean, or of the regression's
        /// intercept for T_o); nil when it cannot be estimated.
        public var standardError: Double?
        /// The per-sample values `seconds` is the mean of; nil for T_o.
        public var spread: Spread?
        /// What the per-checkpoint cost is made of; nil for T_o and for a
        /// T_mg taken from CEVM's QEMU-reported downtime.
        public var components: CostComponents?
        /// How the value was obtained, in words.
        public var source: String
        /// Caveats: lower bounds, clamping, unmeasured progress.
        public var notes: [String]

        public init(
            term: Term, basis: Basis = .given, seconds: Double, standardError: Double? = nil, spread: Spread? = nil,
            components: CostComponents? = nil, source: String, notes: [String] = []
        ) {
            self.term = term
            self.basis = basis
            self.seconds = seconds
            self.standardError = standardError
            self.spread = spread
            self.components = components
            self.source = source
            self.notes = notes
        }
    }

    /// The parts of a per-checkpoint cost, each over the same samples.
    public struct CostComponents: Sendable, Hashable, Codable {
        public var guestPause: Spread
        /// `overlap · (1 − progress)`, 0 where progress was not measured.
        public var lostProgress: Spread
        public var overlap: Spread
        /// Request to durable record: the checkpoint's latency, which the
        /// model does not charge (Docs/turnaround.md, "Latency").
        public var timeToDurable: Spread
        public var bytes: Spread
        /// Samples with an overlap but no measured progress rate.
        public var samplesWithoutProgress: Int
        /// Samples whose lost progress is the host's estimate (the guest
        /// did not measure its own).
        public var samplesWithHostEstimate: Int
    }

    /// A term the fit could not estimate, and why.
    public struct MissingTerm: Sendable, Hashable, Codable {
        public var term: Term
        public var reason: String

        public init(term: Term, reason: String) {
            self.term = term
            self.reason = reason
        }
    }

    /// The fitted model: every term it could estimate, the ones it could not
    /// and why, and the regressions over whole runs.
    public struct FittedModel: Sendable, Hashable, Codable {
        /// Estimated terms, in the order T_cpt, T_mg, T_cevm, T_bg, T_o.
        public var terms: [TermEstimate]
        /// Terms without an estimate. A missing T_o is taken as 0 (listed
        /// here all the same); a missing per-checkpoint term makes
        /// predictions for its mechanism throw.
        public var missing: [MissingTerm]
        /// One per mechanism whose runs span at least two distinct n.
        public var regressions: [RunRegression]
        public var sampleCount: Int
        public var runCount: Int
        /// Model-wide caveats (for example a slope that disagrees with a term).
        public var notes: [String]

        public init(
            terms: [TermEstimate], missing: [MissingTerm] = [], regressions: [RunRegression] = [],
            sampleCount: Int = 0, runCount: Int = 0, notes: [String] = []
        ) {
            self.terms = terms
            self.missing = missing
            self.regressions = regressions
            self.sampleCount = sampleCount
            self.runCount = runCount
            self.notes = notes
        }

        public func estimate(_ term: Term) -> TermEstimate? {
            terms.first { $0.term == term }
        }

        /// Why `term` is missing; nil when it is estimated.
        public func missingReason(_ term: Term) -> String? {
            guard estimate(term) == nil else { return nil }
            return missing.first { $0.term == term }?.reason ?? "the model has no estimate"
        }

        /// δ for `mechanism`: T_cpt, T_mg, T_cevm or T_bg.
        public func perCheckpointCost(_ mechanism: Mechanism) throws(TurnaroundError) -> Double {
            guard let e = estimate(mechanism.term) else {
                throw .missingTerm(mechanism.term, reason: missingReason(mechanism.term) ?? "")
            }
            return e.seconds
        }

        /// T_o, 0 when it could not be estimated.
        public var cevmFixedOverhead: Double { estimate(.tO)?.seconds ?? 0 }

        /// The n-independent term of `mechanism`'s formula: T_o for CEVM,
        /// 0 for the others.
        public func fixedOverhead(_ mechanism: Mechanism) -> Double {
            mechanism == .cevm ? cevmFixedOverhead : 0
        }

        /// Mechanisms whose per-checkpoint term is known, in `allCases` order.
        public var mechanisms: [Mechanism] {
            Mechanism.allCases.filter { estimate($0.term) != nil }
        }

        public func regression(_ mechanism: Mechanism) -> RunRegression? {
            regressions.first { $0.mechanism == mechanism }
        }
    }
}
