// The turnaround model of seed 001 ("Performance Discussion"):
//
//   stop-and-save  T_vm = T_comp + n·T_cpt
//   migration      T_vm = T_comp + n·T_mg
//   CEVM           T_vm = T_comp + n·T_cevm + T_o,   T_mg ≤ T_cevm + T_o/n ≤ T_cpt
//
// plus QEMU's background snapshot, T_vm = T_comp + n·T_bg. Every formula,
// every fitting choice and the reasons are in Docs/turnaround.md.

/// Namespace for the turnaround model: fitting, prediction, the seed's
/// inequality, checkpoint intervals under failures, validation and rendering.
///
/// Every public type is nested here (`Turnaround.Mechanism`, …) so that a
/// module importing both `Records` and `Turnaround` can name each
/// `Mechanism` unambiguously: a top-level type of this module could not be
/// qualified, since the module and this enum share the name.
public enum Turnaround {
    /// The largest duration, in seconds, any input may hold (about 31,700
    /// years). It is no measurement limit: it keeps sums and products of
    /// inputs far from overflow.
    public static let maximumSeconds: Double = 1e12

    /// The most checkpoints a prediction or a schedule may involve.
    public static let maximumCheckpoints: Int = 1_000_000_000
}

extension Turnaround {
    /// How a checkpoint is taken. The raw values of `stopAndSave`, `cevm` and
    /// `backgroundSnapshot` are those of the record manifest's `mechanism`,
    /// so `Turnaround.Mechanism(rawValue: manifest.mechanism.rawValue)`
    /// converts. `migration` is a plain live migration with nothing saved:
    /// it writes no record, but `cevm bench` can measure it.
    public enum Mechanism: String, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
        /// Pause the guest, save memory and disk, resume: the seed's T_cpt.
        case stopAndSave = "stop-and-save"
        /// A live migration to another process, nothing saved: the seed's T_mg.
        case migration
        /// Live-migrate to a new pinned instance while the old side
        /// serialises: the seed's T_cevm (and T_o).
        case cevm
        /// QEMU's userfaultfd write-protect snapshot: T_bg.
        case backgroundSnapshot = "background-snapshot"

        public var description: String { rawValue }

        /// The model's per-checkpoint term for this mechanism.
        public var term: Term {
            switch self {
            case .stopAndSave: .tCpt
            case .migration: .tMg
            case .cevm: .tCevm
            case .backgroundSnapshot: .tBg
            }
        }

        /// A name for prose: "stop-and-save", "a plain live migration", …
        var prose: String {
            switch self {
            case .stopAndSave: "stop-and-save"
            case .migration: "a plain live migration"
            case .cevm: "CEVM"
            case .backgroundSnapshot: "background snapshot"
            }
        }
    }

    /// The model's terms. Raw values are the seed's symbols.
    public enum Term: String, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
        /// Per-checkpoint cost of stop-and-save.
        case tCpt = "T_cpt"
        /// Per-checkpoint cost of a plain live migration.
        case tMg = "T_mg"
        /// Per-checkpoint cost of CEVM.
        case tCevm = "T_cevm"
        /// Per-checkpoint cost of a background snapshot.
        case tBg = "T_bg"
        /// CEVM's fixed overhead, independent of n.
        case tO = "T_o"

        public var description: String { rawValue }

        /// The mechanism whose per-checkpoint cost this is; nil for T_o.
        public var mechanism: Mechanism? {
            switch self {
            case .tCpt: .stopAndSave
            case .tMg: .migration
            case .tCevm: .cevm
            case .tBg: .backgroundSnapshot
            case .tO: nil
            }
        }
    }
}
