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
        case stopping
        /// Ended by request, or by the guest powering off.
        case stopped
        /// Ended by an error: `message` and `exitReason` say which.
        case failed

        public var isLive: Bool { self == .starting || self == .booting || self == .running || self == .stopping }
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

    public init(name: VMName, state: State) {
        self.name = name
        self.state = state
        self.vcpuThreads = []
        self.updatedAt = Timestamp.now()
    }
}
