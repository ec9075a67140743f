/// A frame in flight across a group checkpoint's cut: sent by `from` before
/// its cut, read by `to` after its own. It is delivered live and recorded
/// with the group; a group restore delivers it to `to` once, before the
/// members run (DESIGN.md, "A network of VMs").
public struct ChannelFrame: Sendable, Equatable, Hashable {
    public var from: String
    public var to: String
    public var frame: [UInt8]

    public init(from: String, to: String, frame: [UInt8]) {
        self.from = from
        self.to = to
        self.frame = frame
    }
}

/// A group checkpoint cutting one network. Each member's cut is its
/// switch-over (`Switch.promote`) or, for a mechanism that keeps its
/// instance, the pause (`Switch.cutInPlace`). The colours:
///
/// - a frame a member sent after its cut to a member that has not cut is
///   held, and delivered to that member at its cut (after what its old
///   instance never read): no recorded state receives a frame whose send
///   is in no record;
/// - a frame a member sent before its cut and written to a member after
///   that member's cut is channel state: delivered live and recorded.
///
/// Frames from or to VMs outside the group are not coloured: the group's
/// cut treats them as the outside world.
public struct Cut: Sendable {
    public let group: String
    public let members: Set<String>
    /// Members whose cut has happened.
    public internal(set) var cut: Set<String> = []
    /// Channel state, in the order the frames were written.
    public internal(set) var channel: [ChannelFrame] = []
    /// Post-cut frames held for members that have not cut, per member.
    var waiting: [String: FrameQueue] = [:]
    /// The most frames held at once, over the cut.
    public internal(set) var mostHeld = 0
    /// Frames held in all, over the cut.
    public internal(set) var framesHeld = 0

    init(group: String, members: Set<String>) {
        self.group = group
        self.members = members
    }

    public var heldFrames: Int { waiting.values.reduce(0) { $0 + $1.count } }
    /// Members with frames held for them now.
    public var holding: [String] { waiting.filter { !$0.value.isEmpty }.keys.sorted() }
    var heldBytes: Int { waiting.values.reduce(0) { $0 + $1.bytes } }
    public var uncut: [String] { members.subtracting(cut).sorted() }

    mutating func hold(_ copy: Copy, for vm: String) {
        waiting[vm, default: FrameQueue()].append(copy)
        framesHeld += 1
        mostHeld = max(mostHeld, heldFrames)
    }

    mutating func record(_ frame: ChannelFrame) { channel.append(frame) }

    /// A copy read by `receiver` after its cut is channel state when a
    /// member sent it before its own cut (or before this cut began).
    func isChannelState(_ copy: Copy, to receiver: String) -> Bool {
        guard let from = copy.from, members.contains(from), members.contains(receiver), cut.contains(receiver) else { return false }
        return copy.postCutOf != group
    }
}

extension Switch {
    /// A group checkpoint starts cutting this network: `members` (VMs with
    /// an active port here) will each cut once.
    public mutating func beginCut(group: String, members: Set<String>) throws(SwitchError) {
        if let cut { throw .cutInProgress(cut.group) }
        for vm in members.sorted() where vms[vm]?.active == nil { throw .noActivePort(vm) }
        cut = Cut(group: group, members: members)
    }

    /// A member cuts without changing instance (stop-and-save, background
    /// snapshot): it is paused and everything it sent has been read
    /// (`handle`d). What it has not read yet — `unread`, the bytes left in
    /// its socket, and what was not written to it — it will read after its
    /// cut: the pre-cut frames among them are channel state. The frames
    /// held for it are then written to it.
    public mutating func cutInPlace(vm: String, unread: [UInt8]) throws(SwitchError) -> [Action] {
        guard var current = cut else { throw .noCut("") }
        guard current.members.contains(vm) else { throw .notMember(vm) }
        if current.cut.contains(vm) { throw .alreadyCut(vm) }
        guard let active = vms[vm]?.active, var port = ports[active] else { throw .noActivePort(vm) }
        let pending = recover(from: &port, unread: unread, counting: false)
        // Copies queued for its socket are recorded as they are written.
        current.cut.insert(vm)
        for copy in pending where current.isChannelState(copy, to: vm) {
            current.record(ChannelFrame(from: copy.from ?? "", to: vm, frame: copy.frame))
        }
        cut = current
        return releaseCutHold(of: vm)
    }

    /// Every member has cut: the cut ends and its channel state is returned.
    public mutating func endCut(group: String) throws(SwitchError) -> Cut {
        guard let current = cut, current.group == group else { throw .noCut(group) }
        let uncut = current.uncut
        if !uncut.isEmpty { throw .membersNotCut(uncut) }
        cut = nil
        return current
    }

    /// The group checkpoint failed: the held frames go to their VMs'
    /// running instances, in order, and nothing is recorded.
    public mutating func abortCut(group: String) throws(SwitchError) -> [Action] {
        guard let current = cut, current.group == group else { throw .noCut(group) }
        cut = nil
        var actions: [Action] = []
        for vm in current.waiting.keys.sorted() {
            guard var waiting = current.waiting[vm] else { continue }
            guard let active = vms[vm]?.active else {
                totals.copiesDropped += waiting.count
                continue
            }
            while let copy = waiting.popFirst() { actions += deliver(copy, to: active) }
        }
        return actions
    }

    /// Writes recorded channel frames to a VM's running instance (a group
    /// restore, before the VM runs), in order, once.
    public mutating func inject(_ frames: [[UInt8]], to vm: String) throws(SwitchError) -> [Action] {
        guard let active = vms[vm]?.active else { throw .noActivePort(vm) }
        var actions: [Action] = []
        for frame in frames {
            totals.copies += 1
            totals.forwarded += 1
            totals.framesReceived += 1
            actions += deliver(Copy(frame: frame), to: active)
        }
        return actions
    }

    /// The post-cut frames held for `vm`, to its active port, in order.
    mutating func releaseCutHold(of vm: String) -> [Action] {
        guard var waiting = cut?.waiting.removeValue(forKey: vm) else { return [] }
        guard let active = vms[vm]?.active else {
            totals.copiesDropped += waiting.count
            return []
        }
        var actions: [Action] = []
        while let copy = waiting.popFirst() { actions += deliver(copy, to: active) }
        return actions
    }
}
