/// The switch's control protocol: one JSON object per line each way, over
/// `control.sock`. A reply to `attach` or `standby` carries QEMU's end of
/// the new port's socket pair as SCM_RIGHTS on its first byte.
///
///     → {"op":"attach","vm":"a","instance":1,"mac":"52:54:00:12:34:56"}
///     ← {"ok":true,"port":3}                       + descriptor
///     → {"op":"status"}
///     ← {"ok":true,"status":{...}}
///     → {"op":"frobnicate"}
///     ← {"ok":false,"error":"bad request: ..."}
public struct NetRequest: Codable, Sendable, Equatable {
    public enum Op: String, Codable, Sendable, CaseIterable {
        /// A VM's first instance: an active port; the reply carries QEMU's end.
        case attach
        /// New_VM's port before the switch-over; the reply carries QEMU's end.
        case standby
        /// Remove a port (`port`).
        case detach
        /// The VM (`vm`) is paused: frames for it are held.
        case hold
        /// The switch-over is done: `port` (the VM's standby port) becomes active.
        case promote
        /// The pause ended without a switch-over.
        case release
        case status
        /// Stop the switch (refused while ports are attached unless `force`).
        case shutdown
        /// A group checkpoint (`group`) starts cutting this network for
        /// `members`. The cut belongs to the connection that began it: if
        /// that connection closes before `cutEnd` or `cutAbort`, the switch
        /// aborts the cut.
        case cutBegin
        /// A member (`vm`, paused) cuts without changing instance.
        case cutInPlace
        /// Every member has cut: the channel state is written to `path`
        /// (atomically, durable) and the cut ends.
        case cutEnd
        /// The group checkpoint failed: held frames are released.
        case cutAbort
        /// A group restore: the frames for `vm` in the channel-state file
        /// at `path` are written to its port, once, before it runs.
        case inject
    }

    public var op: Op
    public var vm: String?
    public var instance: Int?
    public var mac: String?
    public var port: Int?
    public var force: Bool?
    public var group: String?
    public var members: [String]?
    public var path: String?
    /// `inject`: the receiver's name in the channel-state file, when the
    /// port's VM is a copy under another name (default `vm`).
    public var recordedAs: String?

    public init(
        op: Op, vm: String? = nil, instance: Int? = nil, mac: String? = nil, port: Int? = nil, force: Bool? = nil,
        group: String? = nil, members: [String]? = nil, path: String? = nil
    ) {
        self.op = op
        self.vm = vm
        self.instance = instance
        self.mac = mac
        self.port = port
        self.force = force
        self.group = group
        self.members = members
        self.path = path
    }

    /// Longest request line the switch reads; a longer one is refused and the connection closed.
    public static let maximumLineBytes = 64 << 10
}

public struct NetResponse: Codable, Sendable, Equatable {
    public var ok: Bool
    public var error: String?
    public var port: Int?
    /// `promote`: frames written again to New_VM (unread by Old_VM).
    public var redelivered: Int?
    public var status: NetStatus?
    /// `cutEnd`: what the cut did on this network.
    public var cut: CutSummary?
    /// `inject`: frames written.
    public var injected: Int?

    public init(ok: Bool, error: String? = nil, port: Int? = nil, redelivered: Int? = nil, status: NetStatus? = nil) {
        self.ok = ok
        self.error = error
        self.port = port
        self.redelivered = redelivered
        self.status = status
    }

    public static func failure(_ message: String) -> NetResponse { NetResponse(ok: false, error: message) }
}

/// A group checkpoint's cut of one network, as `cutEnd` reports it.
public struct CutSummary: Codable, Sendable, Equatable {
    public var group: String
    public var members: [String]
    /// Frames recorded as channel state, and their bytes.
    public var channelFrames: Int
    public var channelBytes: Int
    /// Post-cut frames held for members that had not cut, in all and at most at once.
    public var framesHeld: Int
    public var mostHeld: Int
    /// The longest a member had frames held for it (ms).
    public var longestHoldMs: Double

    public init(
        group: String, members: [String], channelFrames: Int, channelBytes: Int, framesHeld: Int, mostHeld: Int, longestHoldMs: Double
    ) {
        self.longestHoldMs = longestHoldMs
        self.group = group
        self.members = members
        self.channelFrames = channelFrames
        self.channelBytes = channelBytes
        self.framesHeld = framesHeld
        self.mostHeld = mostHeld
    }
}

/// What `status` returns: the switch, its ports and counters.
public struct NetStatus: Codable, Sendable, Equatable {
    public struct Port: Codable, Sendable, Equatable {
        public var port: Int
        public var vm: String
        public var instance: Int
        public var mac: String?
        /// active, standby or retired
        public var state: String
        /// The port's VM is paused: frames for it are held.
        public var held: Bool
        public var framesIn: Int
        public var bytesIn: Int
        public var framesOut: Int
        public var bytesOut: Int
        public var queuedFrames: Int
        /// Drops by reason (oversize, runt, notActive, sameSegment, queueFull, holdFull, lostAtSwitchOver; copies queued for a port that leaves count in the network's total only).
        public var drops: [String: Int]
        /// Frames held for the port's VM while it was paused or had not cut
        /// in a group cut (absent from a switch older than these counters).
        public var framesHeld: Int?
        /// Frames the VM's previous instance was written and never read,
        /// written again to this port at its promote.
        public var framesRedelivered: Int?
        /// Frames that waited for the previous instance (queued or held),
        /// handed to this port at its promote.
        public var framesCarriedOver: Int?

        public init(
            port: Int, vm: String, instance: Int, mac: String?, state: String, held: Bool, framesIn: Int, bytesIn: Int,
            framesOut: Int, bytesOut: Int, queuedFrames: Int, drops: [String: Int]
        ) {
            self.port = port
            self.vm = vm
            self.instance = instance
            self.mac = mac
            self.state = state
            self.held = held
            self.framesIn = framesIn
            self.bytesIn = bytesIn
            self.framesOut = framesOut
            self.bytesOut = bytesOut
            self.queuedFrames = queuedFrames
            self.drops = drops
        }
    }

    public var network: String
    public var pid: Int32
    public var ports: [Port]
    public var framesReceived: Int
    public var forwarded: Int
    public var drops: Int
    /// MAC → port number, as learned.
    public var macTable: [String: Int]
    /// Switch-overs (CEVM promotes) on this network, and over all of them
    /// (kept when the ports are gone): frames held for paused VMs or
    /// uncut group members, frames Old_VM never read and New_VM was sent
    /// again, frames waiting for Old_VM handed to New_VM, and switch-overs
    /// that lost unread frames older than the redelivery window. Absent
    /// from a switch older than these counters.
    public var promotes: Int?
    public var framesHeld: Int?
    public var framesRedelivered: Int?
    public var framesCarriedOver: Int?
    public var lostAtSwitchOver: Int?
    /// The group checkpoint cutting the network, if any: its group id, the members that have cut and those that have not.
    public var cut: CutProgress?

    public struct CutProgress: Codable, Sendable, Equatable {
        public var group: String
        public var cut: [String]
        public var uncut: [String]
        public var heldFrames: Int
        public var channelFrames: Int

        public init(group: String, cut: [String], uncut: [String], heldFrames: Int, channelFrames: Int) {
            self.group = group
            self.cut = cut
            self.uncut = uncut
            self.heldFrames = heldFrames
            self.channelFrames = channelFrames
        }
    }

    public init(network: String, pid: Int32, ports: [Port], framesReceived: Int, forwarded: Int, drops: Int, macTable: [String: Int]) {
        self.network = network
        self.pid = pid
        self.ports = ports
        self.framesReceived = framesReceived
        self.forwarded = forwarded
        self.drops = drops
        self.macTable = macTable
    }
}
