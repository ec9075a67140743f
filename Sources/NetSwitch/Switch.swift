/// A port's number, unique for the life of one switch (never reused).
public struct PortID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let value: Int
    public init(_ value: Int) { self.value = value }
    public var description: String { "port \(value)" }
    public static func < (lhs: PortID, rhs: PortID) -> Bool { lhs.value < rhs.value }
}

/// Who a port belongs to: one instance (one QEMU process) of one VM on one network.
public struct PortOwner: Hashable, Sendable, CustomStringConvertible {
    public let network: String
    public let vm: String
    public let instance: Int

    public init(network: String, vm: String, instance: Int) {
        self.network = network
        self.vm = vm
        self.instance = instance
    }

    public var description: String { "\(vm) instance \(instance) on \(network)" }
}

/// What a port does: the instance that runs (`active`), New_VM's port before
/// the switch-over (`standby`: receives nothing), or Old_VM's after it
/// (`retired`: receives nothing, its frames still forwarded).
public enum PortState: String, Sendable, Codable {
    case active, standby, retired
}

/// Why a frame (or one copy of a flooded frame) was not delivered.
public enum DropReason: String, Sendable, Codable, CaseIterable, Comparable {
    /// Longer than `Limits.maximumFrameBytes`.
    case oversize
    /// Shorter than an Ethernet header (14 bytes).
    case runt
    /// Sent on a standby port (New_VM is not running yet).
    case notActive
    /// Addressed to a MAC learned on the sender's own port.
    case sameSegment
    /// The destination port's output queue was full.
    case queueFull
    /// The paused VM's hold queue was full.
    case holdFull
    /// Unread by Old_VM but older than the redelivery window: not resent.
    case lostAtSwitchOver

    public static func < (lhs: DropReason, rhs: DropReason) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Frames and bytes through one port, and the frames it dropped.
public struct PortCounters: Sendable, Equatable, Codable {
    public var framesIn = 0
    public var bytesIn = 0
    public var framesOut = 0
    public var bytesOut = 0
    public var drops: [DropReason: Int] = [:]
    /// Copies held for the port's VM while it was paused (`hold`) or had not
    /// cut yet in a group cut, instead of being written.
    public var held = 0
    /// Copies the VM's previous instance was written and never read, written
    /// again to this port at its promote.
    public var redelivered = 0
    /// Copies that waited for the VM's previous instance (its output queue
    /// or its hold) and were handed to this port at its promote.
    public var carriedOver = 0

    public init() {}

    public var totalDrops: Int { drops.values.reduce(0, +) }

    mutating func drop(_ reason: DropReason, _ count: Int = 1) { drops[reason, default: 0] += count }
}

/// Whole-switch counts whose sums balance (`Switch.isBalanced`): every
/// frame received is dropped at ingress or forwarded, and every copy a
/// forwarded frame makes (one per destination) is written, dropped, or
/// still waiting in a queue.
public struct Totals: Sendable, Equatable, Codable {
    public var framesReceived = 0
    public var ingressDrops = 0
    public var forwarded = 0
    public var copies = 0
    public var copiesWritten = 0
    public var copiesDropped = 0
    /// Copies written once more to New_VM after a switch-over (not new copies).
    public var redelivered = 0
    public var unreadMismatches = 0
    /// Switch-overs (`promote`s) done.
    public var promotes = 0
    /// Copies held for paused VMs or for group-cut members that had not cut.
    public var held = 0
    /// Copies waiting for Old_VM (queued or held), handed to New_VM at a promote.
    public var carriedOver = 0
    /// Switch-overs at which Old_VM left unread more than the redelivery window kept.
    public var lostAtSwitchOver = 0

    public init() {}
}

/// Bounds of the switch. Defaults are per port (queues) and per VM (holds).
public struct Limits: Sendable, Equatable {
    /// 65536: a power of two above every Ethernet frame a guest sends
    /// (1514, or 9018 with jumbo frames), and below QEMU's receive buffer for
    /// a `-netdev stream` packet (`NET_BUFSIZE`, 4096 + 65536 bytes), so QEMU
    /// accepts every frame the switch forwards. The 4-byte length prefix
    /// could say up to 4 GiB; anything longer than this is refused.
    public static let maximumFrameBytes = 65536
    public static let ethernetHeaderBytes = 14
    /// Bytes of QEMU's `-netdev stream` framing before each frame.
    public static let lengthPrefixBytes = 4

    public var maximumFrameBytes = Limits.maximumFrameBytes
    /// Frames waiting for a port whose socket is full.
    public var queueFrames = 256
    public var queueBytes = 1 << 20
    /// Frames held for a paused VM.
    public var holdFrames = 4096
    public var holdBytes = 8 << 20
    /// Bytes of a port's written stream kept for redelivery: at least what
    /// the socket can hold unread (the server sizes its socket buffers below it).
    public var redeliveryWindowBytes = 4 << 20

    public init() {}
}

public enum SwitchError: Error, Sendable, Equatable, CustomStringConvertible {
    case unknownPort(PortID)
    case unknownVM(String)
    case vmAlreadyAttached(String, PortID)
    case noActivePort(String)
    case standbyExists(String, PortID)
    case notStandby(String, PortID)
    case alreadyHeld(String)
    case notHeld(String)
    case cutInProgress(String)
    case noCut(String)
    case notMember(String)
    case alreadyCut(String)
    case membersNotCut([String])
    /// Another VM's port holds the MAC: two machines with one MAC on one
    /// segment (a copy restored beside its original).
    case macInUse(MACAddress, vm: String, PortID)

    public var description: String {
        switch self {
        case .unknownPort(let p): return "no \(p) on this network"
        case .unknownVM(let vm): return "VM '\(vm)' has no port on this network"
        case .vmAlreadyAttached(let vm, let p): return "VM '\(vm)' already has an active port (\(p)); a second instance joins as standby"
        case .noActivePort(let vm): return "VM '\(vm)' has no active port"
        case .standbyExists(let vm, let p): return "VM '\(vm)' already has a standby port (\(p))"
        case .notStandby(let vm, let p): return "\(p) is not a standby port of VM '\(vm)'"
        case .alreadyHeld(let vm): return "VM '\(vm)' is already held"
        case .notHeld(let vm): return "VM '\(vm)' is not held"
        case .cutInProgress(let group): return "group checkpoint \(group) is cutting this network already"
        case .noCut(let group): return "no group checkpoint \(group) is cutting this network"
        case .notMember(let vm): return "VM '\(vm)' is not a member of the group checkpoint cutting this network"
        case .alreadyCut(let vm): return "VM '\(vm)' has cut already"
        case .membersNotCut(let vms): return "member(s) \(vms.joined(separator: ", ")) have not cut"
        case .macInUse(let mac, let vm, let p):
            return "MAC \(mac) is already on this network (VM '\(vm)', \(p)): two machines with one MAC on one network; "
                + "stop '\(vm)', or attach this VM to a copy of the network (cevm restore --network-suffix)"
        }
    }
}

/// A learning L2 switch as a value: events in, actions out. It does no I/O:
/// a driver reads frames from the ports' sockets, hands them to `handle`,
/// and performs the returned actions in order.
public struct Switch: Sendable {
    /// Data-path events, reported by the driver.
    public enum Event: Sendable, Equatable {
        /// A whole frame (without its length prefix) read from a port.
        case frameReceived(PortID, [UInt8])
        /// A frame longer than the limit, skipped by the driver's decoder unread.
        case frameRefused(PortID, length: Int)
        /// The port's socket can take more (true) or is full (false).
        case writabilityChanged(PortID, Bool)
        /// The port's oldest `frames` unconfirmed writes reached its socket.
        case wrote(PortID, frames: Int)
    }

    public enum Action: Sendable, Equatable {
        /// Write `frame` to the port, with its 4-byte big-endian length first;
        /// report `.wrote` when it is in the socket.
        case write(PortID, [UInt8])
        /// Close the port's socket (Old_VM's, after a switch-over).
        case close(PortID)
    }

    /// A frame written to a port: its offset in the port's byte stream
    /// (length prefixes included) and whether it reached the socket.
    struct Written: Sendable {
        var start: UInt64
        var frame: [UInt8]
        var confirmed: Bool
        /// Its sender, and the group cut after whose cut of the sender it was sent.
        var from: String?
        var postCutOf: String?
        var end: UInt64 { start + UInt64(Limits.lengthPrefixBytes + frame.count) }
    }

    public struct Port: Sendable {
        public let id: PortID
        public let owner: PortOwner
        public let mac: MACAddress?
        public internal(set) var state: PortState
        public internal(set) var counters = PortCounters()
        public internal(set) var writable = true
        var queue = FrameQueue()
        var log: [Written] = []
        var streamBytes: UInt64 = 0
        /// Frames dropped from `log` by the window: their bytes are still counted in `streamBytes`.
        var logStart: UInt64 = 0
        /// `log[unconfirmedFrom...]` never reached the socket (yet).
        var unconfirmedFrom = 0

        public var queuedFrames: Int { queue.count }
        public var queuedBytes: Int { queue.bytes }
    }

    struct VM: Sendable {
        var active: PortID?
        var standby: PortID?
        var held: FrameQueue?
    }

    public let network: String
    public let limits: Limits
    public private(set) var ports: [PortID: Port] = [:]
    var vms: [String: VM] = [:]
    public private(set) var macTable: [MACAddress: PortID] = [:]
    public internal(set) var totals = Totals()
    /// The group checkpoint cutting this network, if any.
    public internal(set) var cut: Cut?
    private var nextPort = 1

    public init(network: String, limits: Limits = Limits()) {
        self.network = network
        self.limits = limits
    }

    // MARK: Queries

    /// Ports in number order.
    public var portList: [Port] { ports.values.sorted { $0.id < $1.id } }

    public func isHeld(_ vm: String) -> Bool { vms[vm]?.held != nil }

    public func heldFrames(_ vm: String) -> Int { vms[vm]?.held?.count ?? 0 }

    public func activePort(of vm: String) -> PortID? { vms[vm]?.active }

    public func standbyPort(of vm: String) -> PortID? { vms[vm]?.standby }

    /// Every frame received was dropped at ingress or forwarded; every copy
    /// was written, dropped, or waits in a queue.
    public var isBalanced: Bool {
        totals.framesReceived == totals.ingressDrops + totals.forwarded
            && totals.copies == totals.copiesWritten + totals.copiesDropped + waitingCopies
    }

    /// Copies waiting in port queues, hold queues and a cut's holds.
    public var waitingCopies: Int {
        ports.values.reduce(0) { $0 + $1.queue.count } + vms.values.reduce(0) { $0 + ($1.held?.count ?? 0) }
            + (cut?.heldFrames ?? 0)
    }

    // MARK: Ports joining and leaving

    /// The first instance of a VM joins: its port is active.
    public mutating func join(vm: String, instance: Int, mac: MACAddress? = nil) throws(SwitchError) -> PortID {
        if let active = vms[vm]?.active { throw .vmAlreadyAttached(vm, active) }
        try checkMACFree(mac, for: vm)
        let id = newPort(vm: vm, instance: instance, mac: mac, state: .active)
        vms[vm, default: VM()].active = id
        return id
    }

    /// New_VM's port joins before the switch-over: it receives nothing and
    /// what it sends is dropped until `promote`.
    public mutating func standby(vm: String, instance: Int, mac: MACAddress? = nil) throws(SwitchError) -> PortID {
        guard let entry = vms[vm], entry.active != nil else { throw .noActivePort(vm) }
        if let standby = entry.standby { throw .standbyExists(vm, standby) }
        try checkMACFree(mac, for: vm)
        let id = newPort(vm: vm, instance: instance, mac: mac, state: .standby)
        vms[vm]?.standby = id
        return id
    }

    /// A MAC belongs to one VM on a network: its instances (Old_VM and
    /// New_VM of a CEVM checkpoint) share it, no other VM's port may.
    private func checkMACFree(_ mac: MACAddress?, for vm: String) throws(SwitchError) {
        guard let mac, let other = ports.values.filter({ $0.mac == mac && $0.owner.vm != vm }).min(by: { $0.id.value < $1.id.value })
        else { return }
        throw .macInUse(mac, vm: other.owner.vm, other.id)
    }

    private mutating func newPort(vm: String, instance: Int, mac: MACAddress?, state: PortState) -> PortID {
        let id = PortID(nextPort)
        nextPort += 1
        ports[id] = Port(id: id, owner: PortOwner(network: network, vm: vm, instance: instance), mac: mac, state: state)
        return id
    }

    /// A port leaves (its instance ended or was detached): what was queued
    /// for it is dropped; if it was a VM's active port, what was held for
    /// the VM too, unless a standby port is left to take it at `promote`.
    public mutating func leave(_ id: PortID) throws(SwitchError) -> [Action] {
        guard let port = ports.removeValue(forKey: id) else { throw .unknownPort(id) }
        totals.copiesDropped += port.queue.count
        let vm = port.owner.vm
        if var entry = vms[vm] {
            if entry.active == id {
                entry.active = nil
                if entry.standby == nil, let held = entry.held {
                    totals.copiesDropped += held.count
                    entry.held = nil
                }
                if entry.standby == nil, let waiting = cut?.waiting.removeValue(forKey: vm) {
                    totals.copiesDropped += waiting.count
                }
            }
            if entry.standby == id { entry.standby = nil }
            vms[vm] = entry.active == nil && entry.standby == nil ? nil : entry
        }
        macTable = macTable.filter { $0.value != id }
        return []
    }

    // MARK: Data path

    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case .frameReceived(let id, let frame): return receive(frame, on: id)
        case .frameRefused(let id, let length):
            totals.framesReceived += 1
            totals.ingressDrops += 1
            ports[id]?.counters.framesIn += 1
            ports[id]?.counters.bytesIn += length
            ports[id]?.counters.drop(.oversize)
            return []
        case .writabilityChanged(let id, let writable):
            guard ports[id] != nil else { return [] }
            ports[id]?.writable = writable
            return writable ? flush(id) : []
        case .wrote(let id, let frames):
            confirm(id, frames: frames)
            return []
        }
    }

    private mutating func receive(_ frame: [UInt8], on id: PortID) -> [Action] {
        totals.framesReceived += 1
        guard let port = ports[id] else {
            totals.ingressDrops += 1
            return []
        }
        ports[id]?.counters.framesIn += 1
        ports[id]?.counters.bytesIn += frame.count
        func refuse(_ reason: DropReason) -> [Action] {
            totals.ingressDrops += 1
            ports[id]?.counters.drop(reason)
            return []
        }
        if frame.count > limits.maximumFrameBytes { return refuse(.oversize) }
        if frame.count < Limits.ethernetHeaderBytes { return refuse(.runt) }
        if port.state == .standby { return refuse(.notActive) }
        let destination = MACAddress(bytes: frame, at: 0)
        let source = MACAddress(bytes: frame, at: 6)
        // A retired port's late frames were sent by the VM before its
        // switch-over: they are forwarded, and its MAC stays on the VM's
        // active port.
        let learnedOn = port.state == .retired ? vms[port.owner.vm]?.active : id
        if !source.isGroup, let learnedOn { macTable[source] = learnedOn }
        var targets: [PortID]
        if !destination.isGroup, let known = macTable[destination], ports[known] != nil {
            if known == learnedOn || known == id { return refuse(.sameSegment) }
            targets = [known]
        } else {
            targets = ports.values.filter { $0.state == .active && $0.id != id && $0.id != learnedOn }.map(\.id).sorted()
        }
        totals.forwarded += 1
        // During a group cut a member's frame is post-cut when its running
        // instance sent it after the member's cut; a retired port's late
        // frames were sent before.
        var postCutOf: String?
        if let cut, cut.cut.contains(port.owner.vm), port.state == .active { postCutOf = cut.group }
        var actions: [Action] = []
        for target in targets {
            totals.copies += 1
            actions += deliver(Copy(frame: frame, from: port.owner.vm, postCutOf: postCutOf), to: target)
        }
        return actions
    }

    /// One copy to a port: held if it is post-cut and the port's VM is a
    /// member that has not cut, held if its VM is paused, queued if its
    /// socket is full, else written.
    mutating func deliver(_ copy: Copy, to id: PortID) -> [Action] {
        let frame = copy.frame
        // Scalars only: a copy of the Port alive across the mutations below
        // would make them copy its queue and log.
        guard let vm = ports[id]?.owner.vm, let writable = ports[id]?.writable, let queued = ports[id]?.queue.count,
            let queuedBytes = ports[id]?.queue.bytes
        else {
            totals.copiesDropped += 1
            return []
        }
        if let heldCount = vms[vm]?.held?.count, let heldBytes = vms[vm]?.held?.bytes {
            if heldCount >= limits.holdFrames || heldBytes + frame.count > limits.holdBytes {
                totals.copiesDropped += 1
                ports[id]?.counters.drop(.holdFull)
                return []
            }
            vms[vm]?.held?.append(copy)
            totals.held += 1
            ports[id]?.counters.held += 1
            return []
        }
        if let cut, copy.postCutOf == cut.group, cut.members.contains(vm), !cut.cut.contains(vm) {
            if cut.heldFrames >= limits.holdFrames || cut.heldBytes + frame.count > limits.holdBytes {
                totals.copiesDropped += 1
                ports[id]?.counters.drop(.holdFull)
                return []
            }
            self.cut?.hold(copy, for: vm)
            totals.held += 1
            ports[id]?.counters.held += 1
            return []
        }
        if !writable || queued > 0 {
            if queued >= limits.queueFrames || queuedBytes + frame.count > limits.queueBytes {
                totals.copiesDropped += 1
                ports[id]?.counters.drop(.queueFull)
                return []
            }
            ports[id]?.queue.append(copy)
            return []
        }
        totals.copiesWritten += 1
        return [emit(copy, to: id)]
    }

    /// Records a write in the port's stream and counters; a pre-cut frame
    /// written to a member after its cut is channel state.
    private mutating func emit(_ copy: Copy, to id: PortID) -> Action {
        let frame = copy.frame
        if let cut, let port = ports[id], port.state == .active, cut.isChannelState(copy, to: port.owner.vm) {
            self.cut?.record(ChannelFrame(from: copy.from ?? "", to: port.owner.vm, frame: frame))
        }
        modifyPort(id) { port in
            port.log.append(Written(start: port.streamBytes, frame: frame, confirmed: false, from: copy.from, postCutOf: copy.postCutOf))
            port.streamBytes += UInt64(Limits.lengthPrefixBytes + frame.count)
            port.counters.framesOut += 1
            port.counters.bytesOut += frame.count
        }
        return .write(id, frame)
    }

    /// Writes what a port has queued, while it is writable.
    private mutating func flush(_ id: PortID) -> [Action] {
        var actions: [Action] = []
        while ports[id]?.writable == true, let copy = ports[id]?.queue.popFirst() {
            totals.copiesWritten += 1
            actions.append(emit(copy, to: id))
        }
        return actions
    }

    /// Confirmations come in write order, so the unconfirmed writes are
    /// always the log's tail, from `port.unconfirmedFrom`.
    private mutating func confirm(_ id: PortID, frames: Int) {
        let window = UInt64(limits.redeliveryWindowBytes)
        modifyPort(id) { port in
            let n = min(max(frames, 0), port.log.count - port.unconfirmedFrom)
            for i in port.unconfirmedFrom..<(port.unconfirmedFrom + n) { port.log[i].confirmed = true }
            port.unconfirmedFrom += n
            let confirmedEnd = port.unconfirmedFrom > 0 ? port.log[port.unconfirmedFrom - 1].end : port.logStart
            // Keep at least the window: confirmed frames wholly older than it
            // go, in batches (an array's front is dropped in O(count)).
            let floor = confirmedEnd > window ? confirmedEnd - window : 0
            var drop = 0
            while drop < port.unconfirmedFrom, port.log[drop].end <= floor { drop += 1 }
            if drop > 0 && (drop >= 64 || drop == port.log.count || drop * 2 > port.log.count) {
                port.logStart = port.log[drop - 1].end
                port.log.removeFirst(drop)
                port.unconfirmedFrom -= drop
            }
        }
    }

    /// Changes a port in place (no copy of its queues and log).
    @discardableResult
    private mutating func modifyPort<R>(_ id: PortID, _ body: (inout Port) -> R) -> R? {
        guard let index = ports.index(forKey: id) else { return nil }
        return body(&ports.values[index])
    }

    // MARK: Checkpoint transitions

    /// The VM is paused: frames for it are held (bounded) instead of
    /// written; frames already queued for its socket join the hold first.
    public mutating func hold(vm: String) throws(SwitchError) {
        guard var entry = vms[vm] else { throw .unknownVM(vm) }
        guard let active = entry.active else { throw .noActivePort(vm) }
        if entry.held != nil { throw .alreadyHeld(vm) }
        var held = FrameQueue()
        while let copy = ports[active]?.queue.popFirst() { held.append(copy) }
        totals.held += held.count
        ports[active]?.counters.held += held.count
        entry.held = held
        vms[vm] = entry
    }

    /// The pause ended without a switch-over (Old_VM runs on): the held
    /// frames go to the active port, in order.
    public mutating func release(vm: String) throws(SwitchError) -> [Action] {
        guard var entry = vms[vm] else { throw .unknownVM(vm) }
        guard var held = entry.held else { throw .notHeld(vm) }
        entry.held = nil
        vms[vm] = entry
        guard let active = entry.active else {
            totals.copiesDropped += held.count
            return []
        }
        var actions: [Action] = []
        while let copy = held.popFirst() { actions += deliver(copy, to: active) }
        return actions
    }

    /// The switch-over is done: `newPort` (the VM's standby port) becomes
    /// active and takes the MACs learned on the old one; the old port is
    /// retired and closed. New_VM first gets the frames Old_VM's QEMU never
    /// read — `unread` is what was left in Old_VM's socket, possibly
    /// starting inside a frame, which is then resent whole — and the frames
    /// never written to it, then the held frames, in order.
    public mutating func promote(vm: String, newPort: PortID, unread: [UInt8]) throws(SwitchError) -> [Action] {
        guard var entry = vms[vm] else { throw .unknownVM(vm) }
        guard entry.standby == newPort, ports[newPort] != nil else { throw .notStandby(vm, newPort) }
        var resend: [Copy] = []
        var actions: [Action] = []
        var carried = 0
        totals.promotes += 1
        if let old = entry.active, var oldPort = ports[old] {
            resend = recover(from: &oldPort, unread: unread)
            // Counted as written once; written (or queued, or dropped) again below.
            totals.copiesWritten -= resend.count
            totals.redelivered += resend.count
            ports[newPort]?.counters.redelivered += resend.count
            carried += oldPort.queue.count
            while let copy = oldPort.queue.popFirst() { resend.append(copy) }
            oldPort.state = .retired
            oldPort.log = []
            oldPort.unconfirmedFrom = 0
            ports[old] = oldPort
            for (mac, port) in macTable where port == old { macTable[mac] = newPort }
            actions.append(.close(old))
        }
        entry.active = newPort
        entry.standby = nil
        let held = entry.held
        entry.held = nil
        vms[vm] = entry
        carried += held?.count ?? 0
        totals.carriedOver += carried
        ports[newPort]?.counters.carriedOver += carried
        ports[newPort]?.state = .active
        // A member's switch-over is its cut: what New_VM is sent from here
        // on was read after the cut.
        let member = cut?.members.contains(vm) == true && cut?.cut.contains(vm) == false
        if member { cut?.cut.insert(vm) }
        for copy in resend { actions += deliver(copy, to: newPort) }
        if var held {
            while let copy = held.popFirst() { actions += deliver(copy, to: newPort) }
        }
        if member { actions += releaseCutHold(of: vm) }
        return actions
    }

    /// The frames of the old port's stream that its reader never took.
    ///
    /// `unread` is the tail of the bytes that reached the socket. Those end
    /// at the confirmed writes' end, or inside the first unconfirmed frame
    /// when the socket took only part of it (a partial write to a full
    /// socket): the end is found by matching `unread` against the stream,
    /// the shortest candidate first (a wrong guess resends a frame rather
    /// than loses one). Every confirmed frame overlapping the unread bytes
    /// is resent whole, then every unconfirmed one.
    mutating func recover(from port: inout Port, unread: [UInt8], counting: Bool = true) -> [Copy] {
        let confirmed = port.log.filter(\.confirmed)
        let unconfirmed = port.log.filter { !$0.confirmed }
        func copies(_ written: [Written]) -> [Copy] { written.map { Copy(frame: $0.frame, from: $0.from, postCutOf: $0.postCutOf) } }
        guard !unread.isEmpty else { return copies(unconfirmed) }
        let confirmedEnd = confirmed.last?.end ?? port.logStart
        // The stream from logStart through the first unconfirmed frame.
        var stream: [UInt8] = []
        for w in confirmed + unconfirmed.prefix(1) { stream += Self.wire(w.frame) }
        let partialLimit = unconfirmed.first.map { UInt64(Limits.lengthPrefixBytes + $0.frame.count) } ?? 1
        var budget = 64 << 20
        var end: UInt64?
        for p in 0..<partialLimit where end == nil {
            if Self.tail(unread, matches: stream, base: port.logStart, end: confirmedEnd + p, budget: &budget) { end = confirmedEnd + p }
            if budget <= 0 { break }
        }
        if end == nil && counting { totals.unreadMismatches += 1 }
        let streamEnd = end ?? confirmedEnd
        let unreadCount = UInt64(unread.count)
        let from = unreadCount > streamEnd ? 0 : streamEnd - unreadCount
        if from < port.logStart && counting {
            // Older than the window: those frames are lost; counted once.
            port.counters.drop(.lostAtSwitchOver)
            totals.lostAtSwitchOver += 1
            totals.copiesWritten -= 1
            totals.copiesDropped += 1
        }
        return copies(confirmed.filter { $0.end > from }) + copies(unconfirmed)
    }

    static func wire(_ frame: [UInt8]) -> [UInt8] {
        let n = UInt32(frame.count)
        return [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)] + frame
    }

    /// True when `unread` ends at stream offset `end` and agrees with
    /// `stream` (which starts at offset `base`) wherever both have bytes.
    /// Compares from the end, stopping at the first difference.
    private static func tail(_ unread: [UInt8], matches stream: [UInt8], base: UInt64, end: UInt64, budget: inout Int) -> Bool {
        guard end >= base, end - base <= UInt64(stream.count), UInt64(unread.count) <= end else { return false }
        var s = Int(end - base) - 1
        var u = unread.count - 1
        while u >= 0 && s >= 0 {
            budget -= 1
            if unread[u] != stream[s] { return false }
            u -= 1
            s -= 1
        }
        return true
    }
}

/// One copy of a frame on its way to a port: the VM that sent it, and the
/// group cut (if any) after whose cut of its sender it was sent.
struct Copy: Sendable {
    init(frame: [UInt8], from: String? = nil, postCutOf: String? = nil) {
        self.frame = frame
        self.from = from
        self.postCutOf = postCutOf
    }

    var frame: [UInt8]
    var from: String?
    var postCutOf: String?
}

/// A FIFO of copies with a running byte count.
struct FrameQueue: Sendable {
    private var frames: [Copy] = []
    private var head = 0
    private(set) var bytes = 0

    var count: Int { frames.count - head }
    var isEmpty: Bool { count == 0 }

    mutating func append(_ copy: Copy) {
        frames.append(copy)
        bytes += copy.frame.count
    }

    mutating func popFirst() -> Copy? {
        guard head < frames.count else { return nil }
        let copy = frames[head]
        head += 1
        bytes -= copy.frame.count
        if head > 64 && head * 2 > frames.count {
            frames.removeFirst(head)
            head = 0
        }
        return copy
    }
}
