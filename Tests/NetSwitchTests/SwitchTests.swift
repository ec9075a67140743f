import NetSwitch
import Testing

/// An Ethernet frame from `src` to `dst` (last byte of each MAC given) with a payload tag.
func frame(_ src: UInt64, _ dst: UInt64, tag: UInt8 = 0, size: Int = 64) -> [UInt8] {
    func mac(_ v: UInt64) -> [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: v >> (40 - 8 * UInt64($0))) } }
    var bytes = mac(dst) + mac(src) + [0x08, 0x00]
    while bytes.count < size { bytes.append(tag) }
    return bytes
}

let hostA: UInt64 = 0x5254_0000_000A
let hostB: UInt64 = 0x5254_0000_000B
let hostC: UInt64 = 0x5254_0000_000C
let everyone: UInt64 = 0xFFFF_FFFF_FFFF
let multicast: UInt64 = 0x0100_5E00_0001

/// The wire form of frames: 4-byte big-endian length, then the frame.
func wire(_ frames: [[UInt8]]) -> [UInt8] {
    frames.flatMap { f -> [UInt8] in
        let n = UInt32(f.count)
        return [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)] + f
    }
}

/// Writes in the actions, per port, in order.
func writes(_ actions: [Switch.Action]) -> [PortID: [[UInt8]]] {
    var out: [PortID: [[UInt8]]] = [:]
    for case .write(let port, let f) in actions { out[port, default: []].append(f) }
    return out
}

struct Three {
    var sw = Switch(network: "lab")
    let a: PortID, b: PortID, c: PortID

    init(limits: Limits = Limits()) throws {
        sw = Switch(network: "lab", limits: limits)
        a = try sw.join(vm: "a", instance: 1)
        b = try sw.join(vm: "b", instance: 1)
        c = try sw.join(vm: "c", instance: 1)
    }

    /// Receives a frame and confirms every write it caused (the sockets took them).
    mutating func send(_ f: [UInt8], on port: PortID) -> [Switch.Action] {
        let actions = sw.handle(.frameReceived(port, f))
        for (p, frames) in writes(actions) { _ = sw.handle(.wrote(p, frames: frames.count)) }
        return actions
    }
}

@Suite struct LearningTests {
    @Test func unknownUnicastBroadcastAndMulticastFloodOtherActivePorts() throws {
        var t = try Three()
        let f1 = frame(hostA, hostB)
        #expect(writes(t.send(f1, on: t.a)) == [t.b: [f1], t.c: [f1]])
        let f2 = frame(hostB, everyone)
        #expect(writes(t.send(f2, on: t.b)) == [t.a: [f2], t.c: [f2]])
        let f3 = frame(hostC, multicast)
        #expect(writes(t.send(f3, on: t.c)) == [t.a: [f3], t.b: [f3]])
        #expect(t.sw.isBalanced)
    }

    @Test func learnedUnicastGoesToOnePort() throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        _ = t.send(frame(hostB, everyone), on: t.b)
        let f = frame(hostA, hostB, tag: 7)
        #expect(writes(t.send(f, on: t.a)) == [t.b: [f]])
        #expect(t.sw.macTable[MACAddress(hostA)] == t.a)
        #expect(t.sw.macTable[MACAddress(hostB)] == t.b)
        #expect(t.sw.ports[t.b]?.counters.framesOut == 2)
        #expect(t.sw.ports[t.a]?.counters.framesIn == 2)
        #expect(t.sw.ports[t.a]?.counters.bytesIn == 128)
    }

    @Test func aMACMovesWithItsSender() throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        _ = t.send(frame(hostA, everyone), on: t.c)
        #expect(t.sw.macTable[MACAddress(hostA)] == t.c)
        let f = frame(hostB, hostA)
        #expect(writes(t.send(f, on: t.b)) == [t.c: [f]])
    }

    @Test func frameToTheSendersOwnPortIsDropped() throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        _ = t.send(frame(0x5254_0000_00AA, everyone), on: t.a)
        #expect(t.send(frame(hostA, 0x5254_0000_00AA), on: t.a).isEmpty)
        #expect(t.sw.ports[t.a]?.counters.drops[.sameSegment] == 1)
        #expect(t.sw.isBalanced)
    }

    @Test func groupSourceIsNotLearned() throws {
        var t = try Three()
        _ = t.send(frame(multicast, everyone), on: t.a)
        #expect(t.sw.macTable.isEmpty)
    }

    @Test func macTextRoundTrips() throws {
        let mac = try #require(MACAddress("52:54:00:AB:cd:0f"))
        #expect(mac.description == "52:54:00:ab:cd:0f")
        #expect(MACAddress("52:54:00:ab:cd") == nil)
        #expect(MACAddress("52:54:00:ab:cd:0g") == nil)
        #expect(MACAddress("52:54:00:ab:cd:f") == nil)
        #expect(MACAddress.broadcast.isGroup && !mac.isGroup)
    }
}

@Suite struct DropTests {
    @Test func oversizeAndRuntFramesAreRefusedAndCounted() throws {
        var t = try Three()
        #expect(t.send(frame(hostA, everyone, size: Limits.maximumFrameBytes + 1), on: t.a).isEmpty)
        #expect(t.send([1, 2, 3], on: t.a).isEmpty)
        #expect(t.sw.handle(.frameRefused(t.a, length: 1 << 20)).isEmpty)
        #expect(t.sw.ports[t.a]?.counters.drops == [.oversize: 2, .runt: 1])
        #expect(t.sw.ports[t.a]?.counters.framesIn == 3)
        #expect(t.send(frame(hostA, everyone, size: Limits.maximumFrameBytes), on: t.a).count == 2)
        #expect(t.sw.isBalanced)
    }

    @Test func aFullSocketQueuesBoundedThenDrops() throws {
        var limits = Limits()
        limits.queueFrames = 3
        limits.queueBytes = 1 << 20
        var t = try Three(limits: limits)
        _ = t.send(frame(hostB, everyone), on: t.b)
        _ = t.sw.handle(.writabilityChanged(t.b, false))
        var sent: [[UInt8]] = []
        for i in 0..<5 {
            let f = frame(hostA, hostB, tag: UInt8(i))
            sent.append(f)
            #expect(t.send(f, on: t.a).isEmpty)
        }
        #expect(t.sw.ports[t.b]?.queuedFrames == 3)
        #expect(t.sw.ports[t.b]?.counters.drops[.queueFull] == 2)
        #expect(t.sw.isBalanced)
        let flushed = t.sw.handle(.writabilityChanged(t.b, true))
        #expect(writes(flushed) == [t.b: Array(sent[0..<3])])
        #expect(t.sw.isBalanced)
    }

    @Test func byteBoundOfTheQueue() throws {
        var limits = Limits()
        limits.queueBytes = 150
        var t = try Three(limits: limits)
        _ = t.send(frame(hostB, everyone), on: t.b)
        _ = t.sw.handle(.writabilityChanged(t.b, false))
        for _ in 0..<3 { _ = t.send(frame(hostA, hostB), on: t.a) }
        #expect(t.sw.ports[t.b]?.queuedBytes == 128)
        #expect(t.sw.ports[t.b]?.counters.drops[.queueFull] == 1)
    }

    @Test func standbyPortsReceiveNothingAndTheirFramesAreDropped() throws {
        var t = try Three()
        let a2 = try t.sw.standby(vm: "a", instance: 2)
        let actions = t.send(frame(hostB, everyone), on: t.b)
        #expect(writes(actions)[a2] == nil)
        #expect(t.send(frame(hostA, everyone), on: a2).isEmpty)
        #expect(t.sw.ports[a2]?.counters.drops[.notActive] == 1)
        #expect(t.sw.ports[a2]?.state == .standby)
    }

    @Test func joiningRules() throws {
        var t = try Three()
        #expect(throws: SwitchError.vmAlreadyAttached("a", t.a)) { _ = try t.sw.join(vm: "a", instance: 2) }
        #expect(throws: SwitchError.noActivePort("z")) { _ = try t.sw.standby(vm: "z", instance: 2) }
        let a2 = try t.sw.standby(vm: "a", instance: 2)
        #expect(throws: SwitchError.standbyExists("a", a2)) { _ = try t.sw.standby(vm: "a", instance: 3) }
        #expect(throws: SwitchError.notStandby("a", t.b)) { _ = try t.sw.promote(vm: "a", newPort: t.b, unread: []) }
        #expect(throws: SwitchError.notHeld("a")) { _ = try t.sw.release(vm: "a") }
        #expect(throws: SwitchError.unknownPort(PortID(99))) { _ = try t.sw.leave(PortID(99)) }
    }

    @Test func aMACBelongsToOneVM() throws {
        var sw = Switch(network: "lab")
        let mac = MACAddress(hostA)
        let a = try sw.join(vm: "a", instance: 1, mac: mac)
        // A copy of a beside it (restored under another name): refused, on join and standby alike.
        #expect(throws: SwitchError.macInUse(mac, vm: "a", a)) { _ = try sw.join(vm: "copy", instance: 1, mac: mac) }
        let other = try sw.join(vm: "other", instance: 1, mac: MACAddress(hostB))
        #expect(throws: SwitchError.macInUse(mac, vm: "a", a)) { _ = try sw.standby(vm: "other", instance: 2, mac: mac) }
        // a's own New_VM shares its MAC; a VM without a MAC is not checked.
        let a2 = try sw.standby(vm: "a", instance: 2, mac: mac)
        _ = try sw.join(vm: "nomac", instance: 1)
        #expect(SwitchError.macInUse(mac, vm: "a", a).description.contains("already on this network (VM 'a', port \(a.value))"))
        // Once every port of a has left, the MAC is free.
        _ = try sw.leave(a)
        _ = try sw.leave(a2)
        _ = try sw.join(vm: "copy", instance: 1, mac: mac)
        _ = other
    }

    @Test func leavingForgetsMACsAndQueuedFrames() throws {
        var t = try Three()
        _ = t.send(frame(hostC, everyone), on: t.c)
        _ = t.sw.handle(.writabilityChanged(t.c, false))
        _ = t.send(frame(hostA, hostC), on: t.a)
        _ = try t.sw.leave(t.c)
        #expect(t.sw.macTable[MACAddress(hostC)] == nil)
        #expect(t.sw.ports[t.c] == nil)
        #expect(t.sw.isBalanced)
        let f = frame(hostA, hostC)
        #expect(writes(t.send(f, on: t.a)) == [t.b: [f]])
        // The VM may attach again.
        _ = try t.sw.join(vm: "c", instance: 2)
    }
}

@Suite struct CheckpointTests {
    @Test func heldFramesGoToNewVMAfterUnreadOnes() throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        _ = t.send(frame(hostB, everyone), on: t.b)
        // Three frames written to A's socket; its QEMU reads the first and half the second.
        let written = (0..<3).map { frame(hostB, hostA, tag: UInt8($0), size: 100) }
        for f in written { _ = t.send(f, on: t.b) }
        let a2 = try t.sw.standby(vm: "a", instance: 2)
        try t.sw.hold(vm: "a")
        #expect(t.sw.isHeld("a"))
        let held = (0..<2).map { frame(hostC, hostA, tag: UInt8(10 + $0)) }
        for f in held { #expect(t.send(f, on: t.c).isEmpty) }
        #expect(t.sw.heldFrames("a") == 2)
        let stream = wire(written)
        let unread = Array(stream[(104 + 50)...])
        let actions = try t.sw.promote(vm: "a", newPort: a2, unread: unread)
        #expect(actions.first == .close(t.a))
        #expect(writes(actions) == [a2: Array(written[1...]) + held])
        #expect(t.sw.ports[a2]?.state == .active)
        #expect(t.sw.ports[t.a]?.state == .retired)
        #expect(t.sw.activePort(of: "a") == a2)
        #expect(t.sw.macTable[MACAddress(hostA)] == a2)
        #expect(!t.sw.isHeld("a"))
        #expect(t.sw.totals.redelivered == 2)
        #expect(t.sw.totals.unreadMismatches == 0)
        #expect(t.sw.isBalanced)
        // The switch-over's counts: held for the paused VM, then redelivered and carried over to New_VM.
        #expect(t.sw.totals.promotes == 1)
        #expect(t.sw.totals.held == 2)
        #expect(t.sw.totals.carriedOver == 2)
        #expect(t.sw.ports[t.a]?.counters.held == 2)
        #expect(t.sw.ports[a2]?.counters.redelivered == 2)
        #expect(t.sw.ports[a2]?.counters.carriedOver == 2)
        #expect(t.sw.ports[a2]?.counters.held == 0)
        // Later frames for A reach New_VM only.
        let f = frame(hostB, hostA, tag: 99)
        #expect(writes(t.send(f, on: t.b)) == [a2: [f]])
    }

    @Test func unreadOnAFrameBoundaryAndNothingUnread() throws {
        for cut in [0, 1, 2, 3] {
            var t = try Three()
            _ = t.send(frame(hostA, everyone), on: t.a)
            let written = (0..<3).map { frame(hostB, hostA, tag: UInt8($0), size: 60) }
            for f in written { _ = t.send(f, on: t.b) }
            let a2 = try t.sw.standby(vm: "a", instance: 2)
            try t.sw.hold(vm: "a")
            let unread = Array(wire(written)[(64 * cut)...])
            let actions = try t.sw.promote(vm: "a", newPort: a2, unread: unread)
            #expect(writes(actions)[a2] ?? [] == Array(written[cut...]))
            #expect(t.sw.totals.unreadMismatches == 0)
            #expect(t.sw.isBalanced)
        }
    }

    @Test func writesThatNeverReachedTheSocketAreResentToo() throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        let confirmed = frame(hostB, hostA, tag: 1)
        _ = t.send(confirmed, on: t.b)
        // Written by the switch but not yet in A's socket (the driver never confirmed it).
        let inFlight = frame(hostB, hostA, tag: 2)
        #expect(writes(t.sw.handle(.frameReceived(t.b, inFlight))) == [t.a: [inFlight]])
        // And one queued because A's socket was full.
        _ = t.sw.handle(.writabilityChanged(t.a, false))
        let queued = frame(hostB, hostA, tag: 3)
        _ = t.sw.handle(.frameReceived(t.b, queued))
        let a2 = try t.sw.standby(vm: "a", instance: 2)
        try t.sw.hold(vm: "a")
        let actions = try t.sw.promote(vm: "a", newPort: a2, unread: Array(wire([confirmed]).suffix(10)))
        #expect(writes(actions) == [a2: [confirmed, inFlight, queued]])
        #expect(t.sw.isBalanced)
        // Written to Old_VM (read or not by its QEMU): redelivered; queued, then held at the pause: carried over.
        #expect(t.sw.ports[a2]?.counters.redelivered == 2)
        #expect(t.sw.ports[a2]?.counters.carriedOver == 1)
        #expect(t.sw.totals.held == 1)
    }

    /// A full socket took only the head of a frame (its write never
    /// completed): the unread bytes end inside it, and it is resent once.
    @Test(arguments: [1, 4, 30, 63])
    func aPartlyWrittenFrameIsFoundAndResentOnce(head: Int) throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        let done = (0..<2).map { frame(hostB, hostA, tag: UInt8($0), size: 60) }
        for f in done { _ = t.send(f, on: t.b) }
        let partial = frame(hostB, hostA, tag: 7, size: 60)
        _ = t.sw.handle(.frameReceived(t.b, partial))
        let a2 = try t.sw.standby(vm: "a", instance: 2)
        try t.sw.hold(vm: "a")
        // QEMU read the first frame and 10 bytes of the second; the socket holds `head` bytes of the third.
        let inSocket = Array(wire(done + [partial])[0..<(128 + head)])
        let actions = try t.sw.promote(vm: "a", newPort: a2, unread: Array(inSocket[(64 + 10)...]))
        #expect(writes(actions) == [a2: [done[1], partial]])
        #expect(t.sw.totals.unreadMismatches == 0)
        #expect(t.sw.isBalanced)
    }

    @Test func releaseDeliversHeldFramesToTheOldPort() throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        try t.sw.hold(vm: "a")
        #expect(throws: SwitchError.alreadyHeld("a")) { try t.sw.hold(vm: "a") }
        let held = (0..<3).map { frame(hostB, hostA, tag: UInt8($0)) }
        for f in held { #expect(t.send(f, on: t.b).isEmpty) }
        let actions = try t.sw.release(vm: "a")
        #expect(writes(actions) == [t.a: held])
        #expect(!t.sw.isHeld("a"))
        #expect(t.sw.isBalanced)
    }

    @Test func holdIsBounded() throws {
        var limits = Limits()
        limits.holdFrames = 2
        var t = try Three(limits: limits)
        _ = t.send(frame(hostA, everyone), on: t.a)
        try t.sw.hold(vm: "a")
        for i in 0..<4 { _ = t.send(frame(hostB, hostA, tag: UInt8(i)), on: t.b) }
        #expect(t.sw.heldFrames("a") == 2)
        #expect(t.sw.ports[t.a]?.counters.drops[.holdFull] == 2)
        #expect(t.sw.isBalanced)
    }

    @Test func floodedFramesAreHeldForAPausedVM() throws {
        var t = try Three()
        try t.sw.hold(vm: "c")
        let f = frame(hostA, everyone)
        #expect(writes(t.send(f, on: t.a)) == [t.b: [f]])
        #expect(t.sw.heldFrames("c") == 1)
        #expect(writes(try t.sw.release(vm: "c")) == [t.c: [f]])
    }

    @Test func queuedFramesJoinTheHoldInOrder() throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        _ = t.sw.handle(.writabilityChanged(t.a, false))
        let first = frame(hostB, hostA, tag: 1)
        _ = t.sw.handle(.frameReceived(t.b, first))
        try t.sw.hold(vm: "a")
        let second = frame(hostB, hostA, tag: 2)
        _ = t.sw.handle(.frameReceived(t.b, second))
        _ = t.sw.handle(.writabilityChanged(t.a, true))
        #expect(writes(try t.sw.release(vm: "a")) == [t.a: [first, second]])
    }

    @Test func lateFramesFromTheRetiredPortAreForwarded() throws {
        var t = try Three()
        _ = t.send(frame(hostB, everyone), on: t.b)
        let a2 = try t.sw.standby(vm: "a", instance: 2)
        try t.sw.hold(vm: "a")
        _ = try t.sw.promote(vm: "a", newPort: a2, unread: [])
        let late = frame(hostA, hostB)
        #expect(writes(t.send(late, on: t.a)) == [t.b: [late]])
        #expect(t.sw.macTable[MACAddress(hostA)] == a2)
        _ = try t.sw.leave(t.a)
        #expect(t.sw.activePort(of: "a") == a2)
    }

    @Test func unreadLongerThanTheStreamIsAMismatch() throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        let a2 = try t.sw.standby(vm: "a", instance: 2)
        _ = try t.sw.promote(vm: "a", newPort: a2, unread: [UInt8](repeating: 0, count: 500))
        #expect(t.sw.totals.unreadMismatches >= 1)
    }

    @Test func theRedeliveryWindowBoundsTheLog() throws {
        var limits = Limits()
        limits.redeliveryWindowBytes = 300
        var t = try Three(limits: limits)
        _ = t.send(frame(hostA, everyone), on: t.a)
        let written = (0..<10).map { frame(hostB, hostA, tag: UInt8($0), size: 96) }
        for f in written { _ = t.send(f, on: t.b) }
        let a2 = try t.sw.standby(vm: "a", instance: 2)
        try t.sw.hold(vm: "a")
        // Everything unread: more than the window keeps.
        let actions = try t.sw.promote(vm: "a", newPort: a2, unread: wire(written))
        let resent = writes(actions)[a2] ?? []
        #expect(resent.count >= 3 && resent.count < 10)
        #expect(resent == Array(written.suffix(resent.count)))
        #expect(t.sw.ports[t.a]?.counters.drops[.lostAtSwitchOver] == 1)
        #expect(t.sw.totals.lostAtSwitchOver == 1)
        #expect(t.sw.ports[a2]?.counters.redelivered == resent.count)
    }

    /// Without `hold` (what the supervisor does): the frames written into
    /// the paused Old_VM's socket are the ones redelivered; those its full
    /// socket made the switch queue are carried over; nothing counts as held.
    @Test func switchOverCountsWithoutAHold() throws {
        var t = try Three()
        _ = t.send(frame(hostA, everyone), on: t.a)
        let read = frame(hostB, hostA, tag: 1)
        _ = t.send(read, on: t.b)
        let a2 = try t.sw.standby(vm: "a", instance: 2)
        // Old_VM paused: two more frames reach its socket, then it is full and one is queued.
        let unread = (2...3).map { frame(hostB, hostA, tag: UInt8($0)) }
        for f in unread { _ = t.send(f, on: t.b) }
        _ = t.sw.handle(.writabilityChanged(t.a, false))
        let queued = frame(hostC, hostA, tag: 4)
        _ = t.sw.handle(.frameReceived(t.c, queued))
        let actions = try t.sw.promote(vm: "a", newPort: a2, unread: wire(unread))
        #expect(writes(actions) == [a2: unread + [queued]])
        #expect(t.sw.totals.promotes == 1)
        #expect(t.sw.totals.held == 0)
        #expect(t.sw.totals.redelivered == 2)
        #expect(t.sw.totals.carriedOver == 1)
        #expect(t.sw.totals.lostAtSwitchOver == 0)
        #expect(t.sw.ports[a2]?.counters.redelivered == 2)
        #expect(t.sw.ports[a2]?.counters.carriedOver == 1)
        #expect(t.sw.isBalanced)
        // A second switch-over of the same VM (New_VM read everything) adds to the network's counts.
        for (p, frames) in writes(actions) { _ = t.sw.handle(.wrote(p, frames: frames.count)) }
        let a3 = try t.sw.standby(vm: "a", instance: 3)
        _ = try t.sw.promote(vm: "a", newPort: a3, unread: [])
        #expect(t.sw.totals.promotes == 2)
        #expect(t.sw.totals.redelivered == 2)
    }
}

/// Seeded random traffic and checkpoint steps: the counts always balance.
@Suite struct ConservationTests {
    struct Rng {
        var state: UInt64
        mutating func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
    }

    @Test(arguments: [1, 2, 3, 4, 5] as [UInt64])
    func framesInEqualFramesDeliveredPlusDrops(seed: UInt64) throws {
        var rng = Rng(state: seed)
        var limits = Limits()
        limits.queueFrames = 4
        limits.holdFrames = 6
        var t = try Three(limits: limits)
        let macs = [hostA, hostB, hostC, everyone, multicast, 0x5254_0000_00EE]
        var instance = 2
        for _ in 0..<2000 {
            let live = t.sw.portList.filter { $0.state != .retired }.map(\.id)
            let port = live[rng.next(live.count)]
            switch rng.next(10) {
            case 0:
                _ = t.sw.handle(.writabilityChanged(port, rng.next(2) == 0))
            case 1:
                let vm = ["a", "b", "c"][rng.next(3)]
                if t.sw.standbyPort(of: vm) == nil { _ = try? t.sw.standby(vm: vm, instance: instance); instance += 1 }
                if !t.sw.isHeld(vm) { try? t.sw.hold(vm: vm) }
            case 2:
                let vm = ["a", "b", "c"][rng.next(3)]
                if let s = t.sw.standbyPort(of: vm), rng.next(2) == 0 {
                    _ = try t.sw.promote(vm: vm, newPort: s, unread: [])
                } else if t.sw.isHeld(vm) {
                    _ = try t.sw.release(vm: vm)
                }
            default:
                let src = [hostA, hostB, hostC][rng.next(3)]
                let actions = t.sw.handle(.frameReceived(port, frame(src, macs[rng.next(macs.count)], size: 14 + rng.next(100))))
                for (p, fs) in writes(actions) where rng.next(3) > 0 { _ = t.sw.handle(.wrote(p, frames: fs.count)) }
            }
            #expect(t.sw.isBalanced)
        }
        #expect(t.sw.totals.framesReceived > 1000)
    }
}

/// Many frames through one port pair: the work per frame stays flat (the
/// redelivery log is trimmed to its window) and the counts balance.
@Suite struct VolumeTests {
    @Test func fiftyThousandFrames() throws {
        var limits = Limits()
        limits.redeliveryWindowBytes = 64 << 10
        var t = try Three(limits: limits)
        _ = t.send(frame(hostA, everyone), on: t.a)
        _ = t.send(frame(hostB, everyone), on: t.b)
        let f = frame(hostA, hostB, size: 1000)
        let clock = ContinuousClock()
        let elapsed = try clock.measure {
            for _ in 0..<50_000 { _ = t.send(f, on: t.a) }
            let b2 = try t.sw.standby(vm: "b", instance: 2)
            let actions = try t.sw.promote(vm: "b", newPort: b2, unread: Array(wire([f, f]).suffix(1500)))
            #expect(writes(actions)[b2]?.count == 2)
        }
        #expect(t.sw.ports[t.a]?.counters.framesIn == 50_001)
        #expect(t.sw.isBalanced)
        #expect(elapsed < .seconds(30), "\(elapsed)")
    }
}
