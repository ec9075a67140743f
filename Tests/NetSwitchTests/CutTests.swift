import NetSwitch
import Testing

/// A frame from `src` to `dst` carrying a 4-byte id, so a test can follow it.
func tagged(_ src: UInt64, _ dst: UInt64, id: Int) -> [UInt8] {
    var f = frame(src, dst)
    f.replaceSubrange(14..<18, with: [UInt8(id >> 24 & 0xFF), UInt8(id >> 16 & 0xFF), UInt8(id >> 8 & 0xFF), UInt8(id & 0xFF)])
    return f
}

func idOf(_ f: [UInt8]) -> Int { Int(f[14]) << 24 | Int(f[15]) << 16 | Int(f[16]) << 8 | Int(f[17]) }

/// Two or three VMs on one switch with sockets simulated as FIFOs of frames
/// written and not read yet, driven through a group cut.
struct CutRig {
    enum Phase: Equatable { case pre, post }

    var sw = Switch(network: "lab")
    let macs: [String: UInt64]
    var inbox: [PortID: [[UInt8]]] = [:]
    var instance: [String: Int] = [:]
    /// Per frame id: its sender, receiver, and the sender's phase when sent.
    var sent: [Int: (from: String, to: String, phase: Phase)] = [:]
    /// Per VM: the ids its running instances read, in order, with the VM's phase then.
    var read: [String: [(id: Int, phase: Phase)]] = [:]
    var cutDone: Set<String> = []
    var nextID = 1

    init(vms: [String]) throws {
        var macs: [String: UInt64] = [:]
        for (i, vm) in vms.enumerated() { macs[vm] = 0x5254_0000_0010 + UInt64(i) }
        self.macs = macs
        for vm in vms {
            let port = try sw.join(vm: vm, instance: 1)
            instance[vm] = 1
            inbox[port] = []
        }
        // Learning: each VM announces itself; nobody counts those.
        for vm in vms { apply(sw.handle(.frameReceived(sw.activePort(of: vm)!, frame(macs[vm]!, everyone)))) }
        for port in inbox.keys { inbox[port] = [] }
    }

    mutating func apply(_ actions: [Switch.Action]) {
        for (port, frames) in writes(actions) {
            inbox[port, default: []] += frames
            _ = sw.handle(.wrote(port, frames: frames.count))
        }
    }

    func phase(_ vm: String) -> Phase { cutDone.contains(vm) ? .post : .pre }

    mutating func send(from: String, to: String) {
        let id = nextID
        nextID += 1
        sent[id] = (from, to, phase(from))
        apply(sw.handle(.frameReceived(sw.activePort(of: from)!, tagged(macs[from]!, macs[to]!, id: id))))
    }

    mutating func read(_ vm: String, count: Int) {
        let port = sw.activePort(of: vm)!
        let taken = inbox[port, default: []].prefix(count)
        inbox[port]?.removeFirst(taken.count)
        for f in taken { read[vm, default: []].append((idOf(f), phase(vm))) }
    }

    /// CEVM: Old_VM stops (what it never read stays in its socket), New_VM's port is promoted.
    mutating func switchOver(_ vm: String) throws {
        let old = sw.activePort(of: vm)!
        instance[vm, default: 1] += 1
        let new = try sw.standby(vm: vm, instance: instance[vm]!)
        let unread = wire(inbox.removeValue(forKey: old) ?? [])
        cutDone.insert(vm)
        apply(try sw.promote(vm: vm, newPort: new, unread: unread))
    }

    /// stop-and-save: the instance pauses and keeps its socket.
    mutating func cutInPlace(_ vm: String) throws {
        let port = sw.activePort(of: vm)!
        cutDone.insert(vm)
        apply(try sw.cutInPlace(vm: vm, unread: wire(inbox[port] ?? [])))
    }

    mutating func drainAll() {
        for vm in macs.keys.sorted() { read(vm, count: Int.max) }
    }
}

@Suite struct GroupCutTests {
    @Test func aPostCutFrameWaitsForItsPreCutReceiver() throws {
        var rig = try CutRig(vms: ["a", "b"])
        try rig.sw.beginCut(group: "g1", members: ["a", "b"])
        try rig.switchOver("a")
        rig.send(from: "a", to: "b")  // post-cut to a pre-cut receiver: held
        #expect(rig.sw.cut?.heldFrames == 1)
        rig.read("b", count: 10)
        #expect(rig.read["b"] == nil, "b's old instance must not read a post-cut frame")
        try rig.switchOver("b")
        #expect(rig.sw.cut?.heldFrames == 0)
        rig.read("b", count: 10)
        #expect(rig.read["b"]?.map(\.id) == [1])
        let cut = try rig.sw.endCut(group: "g1")
        #expect(cut.channel.isEmpty)
        #expect(cut.framesHeld == 1)
        #expect(rig.sw.isBalanced)
    }

    @Test func aPreCutFrameReadAfterTheReceiversCutIsChannelState() throws {
        var rig = try CutRig(vms: ["a", "b"])
        try rig.sw.beginCut(group: "g1", members: ["a", "b"])
        rig.send(from: "a", to: "b")  // 1: unread by b's old instance: redelivered, recorded
        try rig.switchOver("b")
        rig.send(from: "a", to: "b")  // 2: pre-cut sender, post-cut receiver: recorded
        rig.send(from: "b", to: "a")  // 3: post-cut sender, pre-cut receiver: held
        try rig.switchOver("a")
        rig.drainAll()
        let cut = try rig.sw.endCut(group: "g1")
        #expect(cut.channel.map { idOf($0.frame) } == [1, 2])
        #expect(cut.channel.allSatisfy { $0.from == "a" && $0.to == "b" })
        #expect(rig.read["b"]?.map(\.id) == [1, 2])
        #expect(rig.read["a"]?.map(\.id) == [3])
    }

    @Test func inPlaceCutRecordsWhatItsInstanceReadsLater() throws {
        var rig = try CutRig(vms: ["a", "b"])
        try rig.sw.beginCut(group: "g1", members: ["a", "b"])
        rig.send(from: "a", to: "b")  // 1: read by b before its cut
        rig.read("b", count: 1)
        rig.send(from: "a", to: "b")  // 2: still in b's socket at its cut: recorded, not resent
        try rig.cutInPlace("b")
        rig.send(from: "b", to: "a")  // 3: held for a
        try rig.cutInPlace("a")
        rig.drainAll()
        let cut = try rig.sw.endCut(group: "g1")
        #expect(cut.channel.map { idOf($0.frame) } == [2])
        #expect(rig.read["b"]?.map(\.id) == [1, 2])
        #expect(rig.read["a"]?.map(\.id) == [3])
        #expect(rig.sw.isBalanced)
    }

    @Test func anAbortedCutReleasesWhatItHeld() throws {
        var rig = try CutRig(vms: ["a", "b"])
        try rig.sw.beginCut(group: "g1", members: ["a", "b"])
        try rig.switchOver("a")
        rig.send(from: "a", to: "b")
        rig.send(from: "a", to: "b")
        #expect(rig.sw.cut?.heldFrames == 2)
        rig.apply(try rig.sw.abortCut(group: "g1"))
        #expect(rig.sw.cut == nil)
        rig.drainAll()
        #expect(rig.read["b"]?.map(\.id) == [1, 2])
        #expect(rig.sw.isBalanced)
    }

    @Test func nonMembersAreTheOutsideWorld() throws {
        var rig = try CutRig(vms: ["a", "b", "c"])
        try rig.sw.beginCut(group: "g1", members: ["a", "b"])
        try rig.switchOver("a")
        rig.send(from: "a", to: "c")  // delivered at once: c is not in the group
        rig.send(from: "c", to: "a")  // not coloured: not channel state
        rig.drainAll()
        #expect(rig.read["c"]?.map(\.id) == [1])
        #expect(rig.read["a"]?.map(\.id) == [2])
        try rig.switchOver("b")
        #expect(try rig.sw.endCut(group: "g1").channel.isEmpty)
    }

    @Test func theCutsRules() throws {
        var rig = try CutRig(vms: ["a", "b"])
        #expect(throws: SwitchError.noActivePort("z")) { try rig.sw.beginCut(group: "g1", members: ["a", "z"]) }
        try rig.sw.beginCut(group: "g1", members: ["a", "b"])
        #expect(throws: SwitchError.cutInProgress("g1")) { try rig.sw.beginCut(group: "g2", members: ["a"]) }
        #expect(throws: SwitchError.membersNotCut(["a", "b"])) { _ = try rig.sw.endCut(group: "g1") }
        #expect(throws: SwitchError.noCut("g2")) { _ = try rig.sw.abortCut(group: "g2") }
        try rig.cutInPlace("a")
        #expect(throws: SwitchError.alreadyCut("a")) { _ = try rig.sw.cutInPlace(vm: "a", unread: []) }
        #expect(throws: SwitchError.membersNotCut(["b"])) { _ = try rig.sw.endCut(group: "g1") }
    }

    /// Random runs of sends, reads and cuts (switch-overs and in-place cuts
    /// mixed) against DESIGN.md's properties 1–3: no member's recorded state
    /// holds a receipt whose send is in no record; the channel state is
    /// exactly the frames sent before their sender's cut and read after
    /// their receiver's; every frame is read once, in its sender's order.
    @Test(arguments: 0..<200)
    func randomRunsKeepTheCutConsistent(seed: Int) throws {
        var rng = SplitMix(UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 &+ 1)
        let vms = seed % 3 == 0 ? ["a", "b", "c"] : ["a", "b"]
        var rig = try CutRig(vms: vms)
        for _ in 0..<rng.next(5) {
            let from = vms[rng.next(vms.count)]
            rig.send(from: from, to: vms.filter { $0 != from }[rng.next(vms.count - 1)])
        }
        try rig.sw.beginCut(group: "g", members: Set(vms))
        var steps = 0
        while rig.cutDone.count < vms.count || steps < 20 {
            steps += 1
            let vm = vms[rng.next(vms.count)]
            switch rng.next(10) {
            case 0..<5:
                let to = vms.filter { $0 != vm }[rng.next(vms.count - 1)]
                rig.send(from: vm, to: to)
            case 5..<8: rig.read(vm, count: rng.next(3))
            default:
                if !rig.cutDone.contains(vm) {
                    if rng.next(2) == 0 { try rig.switchOver(vm) } else { try rig.cutInPlace(vm) }
                }
            }
        }
        let cut = try rig.sw.endCut(group: "g")
        rig.drainAll()
        // 3: every frame read exactly once, in its sender's order.
        var seen: [Int: Int] = [:]
        for vm in vms {
            for r in rig.read[vm] ?? [] { seen[r.id, default: 0] += 1 }
            let ids = (rig.read[vm] ?? []).map(\.id)
            for sender in vms {
                let fromSender = ids.filter { rig.sent[$0]?.from == sender }
                #expect(fromSender == fromSender.sorted(), "seed \(seed): \(vm) read \(sender)'s frames out of order")
            }
        }
        #expect(seen.count == rig.sent.count && seen.values.allSatisfy { $0 == 1 }, "seed \(seed): lost or duplicated frames")
        // 1: consistency.
        for vm in vms {
            for r in rig.read[vm] ?? [] where r.phase == .pre {
                #expect(rig.sent[r.id]?.phase == .pre, "seed \(seed): \(vm) recorded the receipt of post-cut frame \(r.id)")
            }
        }
        // 2: channel state.
        var expected: [Int] = []
        for vm in vms {
            for r in rig.read[vm] ?? [] where r.phase == .post && rig.sent[r.id]?.phase == .pre {
                expected.append(r.id)
            }
        }
        // Frames sent before the cut began are pre-cut too.
        let recorded = cut.channel.map { idOf($0.frame) }
        #expect(Set(recorded) == Set(expected), "seed \(seed)")
        #expect(recorded.count == Set(recorded).count, "seed \(seed): a channel frame recorded twice")
        #expect(rig.sw.isBalanced)
    }
}

struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next(_ n: Int) -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int((z ^ (z >> 31)) % UInt64(max(n, 1)))
    }
}
