import VMStore

/// The supervisor's control socket speaks JSON lines: one request, one
/// response, per line.
///
///     client                         supervisor
///       | {"op":"status"}\n              |
///       |------------------------------->|
///       |      {"ok":true,"status":{..}}\n|
///       |<-------------------------------|
public enum ControlRequest: String, Codable, Sendable {
    case status
    case stop
}

public struct ControlMessage: Codable, Sendable {
    public var op: ControlRequest

    public init(op: ControlRequest) { self.op = op }
}

public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var status: VMStatus?
    public var error: String?

    public init(ok: Bool, status: VMStatus? = nil, error: String? = nil) {
        self.ok = ok
        self.status = status
        self.error = error
    }
}

/// Errors of the supervisor and its control socket.
public enum SupervisorError: Error, Sendable, CustomStringConvertible {
    case alreadyRunning(VMName, pid: Int32?)
    case unknownVM(VMName)
    case notRunning(VMName)
    case controlFailed(VMName, String)
    case diedAtBoot(VMName, reason: String, console: String)
    case startFailed(VMName, String)
    case badSpec(String)

    public var description: String {
        switch self {
        case .alreadyRunning(let name, let pid):
            return "VM '\(name)' is already running" + (pid.map { " (supervisor pid \($0))" } ?? "")
        case .unknownVM(let name): return "no VM named '\(name)' (see `cevm ps`)"
        case .notRunning(let name): return "VM '\(name)' is not running"
        case .controlFailed(let name, let reason): return "cannot reach the supervisor of '\(name)': \(reason)"
        case .diedAtBoot(let name, let reason, let console):
            return "the guest of '\(name)' died at boot: \(reason)"
                + (console.isEmpty ? "" : "\nlast console lines:\n\(console)")
        case .startFailed(let name, let reason): return "cannot start '\(name)': \(reason)"
        case .badSpec(let reason): return reason
        }
    }
}
