import DiskIntegration
import Testing

/// One seeded random run: a small disk, T holding a random subset, New_VM
/// issuing reads and writes (whole, partial, multi-cluster, around the
/// cursor, to clusters T did not hold) interleaved at random with sweep steps
/// and message deliveries; then the four properties are checked.
func randomRun(seed: UInt64, bug: InjectedBug? = nil) throws -> Harness {
    var rng = SplitMix64(seed: seed)
    let clusterSize = [4, 8, 16].randomElement(using: &rng) ?? 8
    let clusterCount = Int.random(in: 2...8, using: &rng)
    let geometry = try Geometry(clusterSize: clusterSize, clusterCount: clusterCount)
    func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) } }
    let base = (0..<clusterCount).map { _ in bytes(clusterSize) }
    var t: [Int: [UInt8]] = [:]
    for k in 0..<clusterCount where Bool.random(using: &rng) { t[k] = bytes(clusterSize) }
    var harness = try Harness(geometry: geometry, base: base, t: t, bug: bug)
    var budget = Int.random(in: 2...14, using: &rng)
    let maxInFlight = Int.random(in: 1...3, using: &rng)
    let notInS0 = (0..<clusterCount).filter { t[$0] == nil }

    func request(_ harness: inout Harness) {
        let kind: DiskRequest.Kind = Bool.random(using: &rng) ? .write : .read
        let disk = geometry.diskSize
        var offset: Int
        var length: Int
        switch Int.random(in: 0..<5, using: &rng) {
        case 0:  // one whole cluster
            offset = Int.random(in: 0..<clusterCount, using: &rng) * clusterSize
            length = clusterSize
        case 1:  // part of one cluster
            let k = Int.random(in: 0..<clusterCount, using: &rng)
            let start = Int.random(in: 0..<clusterSize, using: &rng)
            offset = k * clusterSize + start
            length = Int.random(in: 1...(clusterSize - start), using: &rng)
        case 2:  // anywhere, possibly several clusters
            offset = Int.random(in: 0..<disk, using: &rng)
            length = Int.random(in: 1...(3 * clusterSize), using: &rng)
        case 3:  // across the cursor's cluster
            let c = harness.old.cursor ?? 0
            let k = max(0, c - Int.random(in: 0...1, using: &rng))
            offset = k * clusterSize + Int.random(in: 0..<clusterSize, using: &rng)
            length = Int.random(in: 1...(2 * clusterSize + 1), using: &rng)
        default:  // a cluster T did not hold at switch-over
            let k = notInS0.randomElement(using: &rng) ?? 0
            let start = Bool.random(using: &rng) ? 0 : Int.random(in: 0..<clusterSize, using: &rng)
            offset = k * clusterSize + start
            length = Bool.random(using: &rng) ? clusterSize - start : Int.random(in: 1...(clusterSize - start), using: &rng)
        }
        offset = min(offset, disk - 1)
        length = min(length, disk - offset)
        harness.submit(kind, offset: offset, length: length, payload: kind == .write ? bytes(length) : [])
    }

    enum Step { case sweep, oldReceive, newReceive, submit }
    var steps = 0
    let maxSteps = 5_000
    while steps < maxSteps {
        steps += 1
        if harness.violations.contains(where: { $0.property == 0 }) { return harness }
        var enabled: [Step] = []
        if !harness.old.eofOnT { enabled += [.sweep, .sweep] }
        if !harness.toOld.isEmpty { enabled += [.oldReceive, .oldReceive, .oldReceive] }
        if !harness.toNew.isEmpty { enabled += [.newReceive, .newReceive, .newReceive] }
        if budget > 0, harness.new.inFlight.count < maxInFlight { enabled += [.submit, .submit, .submit] }
        guard let step = enabled.randomElement(using: &rng) else {
            if !harness.isFinished { harness.record(.deadlock) }
            break
        }
        switch step {
        case .sweep: harness.sweep()
        case .oldReceive: harness.oldReceive()
        case .newReceive: harness.newReceive()
        case .submit:
            budget -= 1
            request(&harness)
        }
    }
    if !harness.isFinished {
        harness.record(.notTerminated(steps: steps))
    } else {
        harness.checkFinalProperties()
    }
    return harness
}

@Suite("Seeded random schedules against a reference map")
struct RandomScheduleTests {
    @Test("10000 random runs: no stale read, no lost write, record == T at switch-over, termination")
    func correctCoreHoldsAllProperties() throws {
        var coverage: [Coverage: Int] = [:]
        for seed in UInt64(0)..<10_000 {
            let harness = try randomRun(seed: seed)
            #expect(harness.violations.isEmpty, "seed \(seed): \(harness.violations)")
            if !harness.violations.isEmpty { return }
            coverage.merge(harness.coverage, uniquingKeysWith: +)
        }
        // The interesting cases really happened (the pass is not vacuous).
        for kind in Coverage.allCases {
            #expect((coverage[kind] ?? 0) > 50, "too few \(kind): \(coverage)")
        }
    }

    @Test(
        "each injected bug is caught by the property checks",
        arguments: [
            (InjectedBug.copyMap, Set([1, 2])),
            (InjectedBug.recordIsT, Set([3])),
            (InjectedBug.cursorToT, Set([1, 2])),
        ])
    func injectedBugIsCaught(bug: InjectedBug, properties: Set<Int>) throws {
        var caught = 0
        for seed in UInt64(0)..<1000 {
            let harness = try randomRun(seed: seed, bug: bug)
            #expect(!harness.violations.contains { $0.property == 0 }, "seed \(seed): \(harness.violations)")
            if harness.violations.contains(where: { properties.contains($0.property) }) {
                caught += 1
            }
        }
        #expect(caught > 20, "\(bug) caught in only \(caught) of 1000 runs")
    }
}
