import CEVMSystem
import QMP

/// Errors of starting, driving and ending a QEMU process.
public enum QEMUError: Error, Sendable, CustomStringConvertible {
    /// The QEMU binary is not installed.
    case qemuMissing(binary: String)
    /// QEMU ended before its QMP socket accepted; `stderr` holds its last words.
    case exitedAtStart(status: ExitStatus, stderr: String)
    /// The QMP socket did not accept within the start timeout.
    case startTimedOut(seconds: Double, stderr: String)
    case qmp(QMPError)
    case kvmUnavailable(String)
    case toolFailed(tool: String, arguments: [String], status: ExitStatus, stderr: String)
    case file(String)
    /// A human monitor command QEMU answered with an error text.
    case monitor(command: String, answer: String)

    public var description: String {
        switch self {
        case .qemuMissing(let binary):
            return "\(binary) not found on PATH: install QEMU (Debian: apt-get install qemu-system-x86 qemu-utils)"
        case .exitedAtStart(let status, let stderr):
            return "QEMU \(status) before it was ready" + (stderr.isEmpty ? "" : ": \(stderr)")
        case .startTimedOut(let seconds, let stderr):
            return "QEMU's QMP socket did not accept within \(seconds) s" + (stderr.isEmpty ? "" : ": \(stderr)")
        case .qmp(let error): return "QMP: \(error)"
        case .kvmUnavailable(let reason): return "KVM is not usable here: \(reason) (use --accel tcg or auto)"
        case .toolFailed(let tool, let arguments, let status, let stderr):
            return "\(tool) \(arguments.joined(separator: " ")) \(status)" + (stderr.isEmpty ? "" : ": \(stderr)")
        case .file(let message): return message
        case .monitor(let command, let answer): return "QEMU's monitor refused '\(command)': \(answer)"
        }
    }
}
