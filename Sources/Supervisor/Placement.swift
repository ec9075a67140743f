import Control
import CEVMSystem

/// The CPU sets one CEVM checkpoint uses.
///
/// Two phases: during the pre-copy the guest still computes on Old_VM while
/// the migration's own work (Old_VM's migration thread, the tee, New_VM
/// receiving) runs on `precopy`; from the switch-over New_VM computes on
/// `newInstance` and the old side finishes on `oldSide`. Under `dedicated`
/// and `alternate` the two sets of each phase are disjoint, so the work of
/// the checkpoint never shares a CPU with the guest.
public struct Placement: Codable, Sendable, Equatable {
    public var policy: AffinityPolicy
    public var newInstance: CPUSet
    public var oldSide: CPUSet

    /// Where the guest computes on Old_VM during the pre-copy: the set it
    /// runs on until the switch-over (`alternate`: the set it leaves).
    public var oldInstance: CPUSet { policy == .alternate ? oldSide : newInstance }

    /// Where the migration's work runs during the pre-copy: the set the
    /// guest is not on (`alternate`: New_VM's own set, where it receives;
    /// `dedicated`: the checkpoint set; `shared`: the VM's set).
    public var precopy: CPUSet { policy == .alternate ? newInstance : oldSide }

    public init(policy: AffinityPolicy, newInstance: CPUSet, oldSide: CPUSet) {
        self.policy = policy
        self.newInstance = newInstance
        self.oldSide = oldSide
    }

    public enum PlacementError: Error, Sendable, Equatable, CustomStringConvertible {
        case notAvailable(CPUSet, available: CPUSet, option: String)
        case empty(option: String)
        case overlap(CPUSet, CPUSet)

        public var description: String {
            switch self {
            case .notAvailable(let set, let available, let option):
                return "\(option) \(set) is not within the CPUs this process may use (\(available))"
            case .empty(let option):
                return "\(option) is empty: no CPU is left for it (give --cpus and --checkpoint-cpus)"
            case .overlap(let a, let b):
                return "--cpus \(a) and --checkpoint-cpus \(b) overlap: the policy needs two disjoint sets"
            }
        }
    }

    /// Chooses the CPU sets.
    ///
    /// - `cpus`: the VM's CPU set (`--cpus`); default the VM's pinned set, or
    ///   else the first half (rounded up) of the available CPUs.
    /// - `checkpointCPUs`: the checkpoint set (`--checkpoint-cpus`); default
    ///   the available CPUs outside `cpus`. Used by `dedicated` and `alternate`.
    /// - `current`: the set the VM's instance runs on now (nil: unpinned).
    public static func choose(
        policy: AffinityPolicy, cpus: CPUSet?, checkpointCPUs: CPUSet?, vmCPUs: CPUSet?, current: CPUSet?,
        available: CPUSet
    ) throws(PlacementError) -> Placement {
        let primary = cpus ?? vmCPUs ?? CPUSet(available.cpus.prefix((available.cpus.count + 1) / 2))
        guard primary.isSubset(of: available) else { throw .notAvailable(primary, available: available, option: "--cpus") }
        guard !primary.isEmpty else { throw .empty(option: "--cpus") }
        if policy == .shared {
            return Placement(policy: policy, newInstance: primary, oldSide: primary)
        }
        let secondary = checkpointCPUs ?? CPUSet(available.cpus.filter { !primary.cpus.contains($0) })
        guard !secondary.isEmpty else { throw .empty(option: "--checkpoint-cpus") }
        guard secondary.isSubset(of: available) else {
            throw .notAvailable(secondary, available: available, option: "--checkpoint-cpus")
        }
        guard Set(primary.cpus).isDisjoint(with: secondary.cpus) else { throw .overlap(primary, secondary) }
        switch policy {
        case .shared, .dedicated:
            return Placement(policy: policy, newInstance: primary, oldSide: secondary)
        case .alternate:
            // The VM moves to the set it did not use last epoch.
            if current == primary {
                return Placement(policy: policy, newInstance: secondary, oldSide: primary)
            }
            return Placement(policy: policy, newInstance: primary, oldSide: current ?? secondary)
        }
    }
}
