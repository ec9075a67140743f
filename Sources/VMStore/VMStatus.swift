import CEVMSystem

/// What the supervisor says about its VM, kept as `status.json` so it can be
/// read while the supervisor runs and after it has gone.
public struct VMStatus: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        /// The supervisor is preparing the disk and starting QEMU.
        case starting
        /// QEMU runs the guest; the boot grace period has not passed yet.
        case booting
        case running
        /// Restored and held before its guest runs (a group restore lets
        /// every member run once all are restored).
        case paused
        case stopping
        /// Ended by request, or by the guest powering off.
        case stopped
        /// Ended by an error: `message` and `exitReason` say which.
        case failed

        public var isLive: Bool { self == .starting || self == .booting || self == .running || self == .paused || self == .stopping }
    }

    public var name: VMName
    public var state: State
    public var supervisorPID: Int32?
    public var qemuPID: Int32?
    public var accel: String?
    public var cpuset: String?
    public var vcpuThreads: [Int32]
    public var qemuVersion: String?
    public var startedAt: String?
    public var updatedAt: String
    /// How the last instance ended (process status, guest shutdown reason).
    public var exitReason: String?
    /// A sentence for a person when something went wrong.
    public var message: String?
    /// Scheduled checkpoints, when a schedule is on.
    public var schedule: ScheduleState?
    /// Host forwards of user NICs ("nic0 tcp:127.0.0.1:8080-:22") that a
    /// CEVM checkpoint could not move to the new instance: the running
    /// instance does not forward them (nil: none lost). A restart or a
    /// restore binds them again.
    public var lostHostForwards: [String]?

    public init(name: VMName, state: State) {
        self.name = name
        self.state = state
        self.vcpuThreads = []
        self.updatedAt = Timestamp.now()
    }
}

/// What `cevm status` shows of a VM's checkpoint schedule.
public struct ScheduleState: Codable, Sendable, Equatable {
    /// The schedule as asked for ("every 10 min, cevm, policy alternate, keep 5").
    public var summary: String
    /// The interval in force, seconds, and how it was chosen.
    public var intervalSeconds: Double?
    public var intervalReason: String?
    public var nextDueAt: String?
    /// The latest results, newest last (at most `recentLimit`).
    public var recent: [Result]

    public static let recentLimit = 5

    public struct Result: Codable, Sendable, Equatable {
        public var at: String
        public var ok: Bool
        public var record: String?
        public var guestPauseMs: Double?
        public var message: String?
        /// Records retention removed after this checkpoint.
        public var removed: [String]

        public init(at: String, ok: Bool, record: String?, guestPauseMs: Double?, message: String?, removed: [String]) {
            self.at = at
            self.ok = ok
            self.record = record
            self.guestPauseMs = guestPauseMs
            self.message = message
            self.removed = removed
        }
    }

    public init(summary: String, intervalSeconds: Double? = nil, intervalReason: String? = nil, nextDueAt: String? = nil, recent: [Result] = []) {
        self.summary = summary
        self.intervalSeconds = intervalSeconds
        self.intervalReason = intervalReason
        self.nextDueAt = nextDueAt
        self.recent = recent
    }
}

extension VMStatus: Validatable {
    /// Every pid names one process (a reader may signal it) and every
    /// number is finite.
    public func validate() throws(InvalidValue) {
        try Validate.pid(supervisorPID, "supervisorPID")
        try Validate.pid(qemuPID, "qemuPID")
        for thread in vcpuThreads { try Validate.pid(thread, "vcpuThreads") }
        if let schedule {
            try Validate.number(schedule.intervalSeconds, "schedule interval", in: 0...1e12, unit: " s")
            for result in schedule.recent { try Validate.number(result.guestPauseMs, "guest pause", in: 0...1e15, unit: " ms") }
        }
    }
}
