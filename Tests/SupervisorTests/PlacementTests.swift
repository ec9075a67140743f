import Control
import CEVMSystem
import Supervisor
import Testing

@Suite struct PlacementTests {
    let two = CPUSet([0, 1])
    let eight = CPUSet(0..<8)

    @Test func sharedKeepsEverythingOnTheVMsSet() throws {
        let p = try Placement.choose(policy: .shared, cpus: nil, checkpointCPUs: nil, vmCPUs: CPUSet([2, 3]), current: CPUSet([2, 3]), available: eight)
        #expect(p.newInstance == CPUSet([2, 3]) && p.oldSide == CPUSet([2, 3]))
    }

    @Test func dedicatedReservesTheRestForCheckpointing() throws {
        let p = try Placement.choose(policy: .dedicated, cpus: nil, checkpointCPUs: nil, vmCPUs: nil, current: nil, available: two)
        #expect(p.newInstance == CPUSet([0]) && p.oldSide == CPUSet([1]))
        let q = try Placement.choose(policy: .dedicated, cpus: CPUSet([0, 1, 2]), checkpointCPUs: CPUSet([7]), vmCPUs: nil, current: nil, available: eight)
        #expect(q.newInstance == CPUSet([0, 1, 2]) && q.oldSide == CPUSet([7]))
    }

    /// On two cores the VM moves between CPU 0 and CPU 1 at every checkpoint.
    @Test func alternateSwapsSetsEveryEpoch() throws {
        var current: CPUSet? = nil
        var seen: [CPUSet] = []
        for _ in 0..<4 {
            let p = try Placement.choose(policy: .alternate, cpus: nil, checkpointCPUs: nil, vmCPUs: nil, current: current, available: two)
            #expect(p.newInstance != p.oldSide)
            seen.append(p.newInstance)
            current = p.newInstance
        }
        #expect(seen == [CPUSet([0]), CPUSet([1]), CPUSet([0]), CPUSet([1])])
        let fromPinned = try Placement.choose(policy: .alternate, cpus: CPUSet([0]), checkpointCPUs: CPUSet([1]), vmCPUs: nil, current: CPUSet([0]), available: two)
        #expect(fromPinned.newInstance == CPUSet([1]) && fromPinned.oldSide == CPUSet([0]))
    }

    /// During the pre-copy the guest computes on one set and the migration's
    /// work runs on the other; `shared` keeps both on the VM's set.
    @Test func thePrecopyRunsAwayFromTheGuest() throws {
        for policy in [AffinityPolicy.dedicated, .alternate] {
            var current: CPUSet? = nil
            for _ in 0..<3 {
                let p = try Placement.choose(policy: policy, cpus: nil, checkpointCPUs: nil, vmCPUs: nil, current: current, available: two)
                #expect(Set(p.precopy.cpus).isDisjoint(with: p.oldInstance.cpus), "\(policy): \(p)")
                // The guest runs on: on the set it computes on now (alternate), or stays on the VM's set (dedicated).
                #expect(p.oldInstance == (policy == .alternate ? p.oldSide : p.newInstance))
                // After the switch-over, New_VM and the old side are disjoint as well.
                #expect(Set(p.newInstance.cpus).isDisjoint(with: p.oldSide.cpus))
                current = p.newInstance
            }
        }
        let shared = try Placement.choose(policy: .shared, cpus: nil, checkpointCPUs: nil, vmCPUs: CPUSet([2, 3]), current: nil, available: eight)
        #expect(shared.precopy == CPUSet([2, 3]) && shared.oldInstance == CPUSet([2, 3]))
    }

    @Test func impossibleSetsAreRefusedWithTheReason() {
        #expect(throws: Placement.PlacementError.empty(option: "--checkpoint-cpus")) {
            try Placement.choose(policy: .dedicated, cpus: CPUSet([0, 1]), checkpointCPUs: nil, vmCPUs: nil, current: nil, available: two)
        }
        #expect(throws: Placement.PlacementError.overlap(CPUSet([0, 1]), CPUSet([1]))) {
            try Placement.choose(policy: .alternate, cpus: CPUSet([0, 1]), checkpointCPUs: CPUSet([1]), vmCPUs: nil, current: nil, available: two)
        }
        #expect(throws: Placement.PlacementError.notAvailable(CPUSet([5]), available: two, option: "--cpus")) {
            try Placement.choose(policy: .shared, cpus: CPUSet([5]), checkpointCPUs: nil, vmCPUs: nil, current: nil, available: two)
        }
    }
}
