import Control
import VMStore

/// Errors of the supervisor and its control socket.
public enum SupervisorError: Error, Sendable, CustomStringConvertible {
    case alreadyRunning(VMName, pid: Int32?)
    /// The VM's lock is held, by its supervisor or a process that outlived it.
    case lockHeld(VMName, LockHolder)
    case unknownVM(VMName)
    case notRunning(VMName)
    case controlFailed(VMName, String)
    case diedAtBoot(VMName, reason: String, console: String)
    case startFailed(VMName, String)
    case badSpec(String)
    case checkpointFailed(String)
    case restoreFailed(String)
    case busy(VMName, String)

    public var description: String {
        switch self {
        case .alreadyRunning(let name, let pid):
            return "VM '\(name)' is already running" + (pid.map { " (supervisor pid \($0))" } ?? "")
        case .lockHeld(let name, let holder):
            if case .supervisor(let pid) = holder { return SupervisorError.alreadyRunning(name, pid: pid).description }
            if case .instance = holder {
                return "VM '\(name)' is held by \(holder): cevm starts no second instance of a VM while a QEMU of it is alive;"
                    + " `cevm stop \(name)` ends it"
            }
            return "VM '\(name)' is held by \(holder), which has its lock open: end that process first"
        case .unknownVM(let name): return "no VM named '\(name)' (see `cevm ps`)"
        case .notRunning(let name): return "VM '\(name)' is not running"
        case .controlFailed(let name, let reason): return "cannot reach the supervisor of '\(name)': \(reason)"
        case .diedAtBoot(let name, let reason, let console):
            return "the guest of '\(name)' died at boot: \(reason)"
                + (console.isEmpty ? "" : "\nlast console lines:\n\(console)")
        case .startFailed(let name, let reason): return "cannot start '\(name)': \(reason)"
        case .badSpec(let reason): return reason
        case .checkpointFailed(let reason): return "checkpoint failed: \(reason)"
        case .restoreFailed(let reason): return "restore failed: \(reason)"
        case .busy(let name, let what): return "VM '\(name)' is busy: \(what)"
        }
    }
}
