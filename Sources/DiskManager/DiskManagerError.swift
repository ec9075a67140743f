import DiskIntegration
import QCOW2

/// Everything the disk manager can fail at.
public enum DiskManagerError: Error, Sendable, CustomStringConvertible {
    /// The qcow2 engine failed on one of the images.
    case image(QCOW2Error)
    /// A protocol state machine rejected an input (a bug in the driver, or a
    /// request the NBD layer should have refused).
    case protocolViolation(DiskIntegrationError)
    /// A request outside the disk.
    case outOfRange(offset: UInt64, length: UInt64, size: UInt64)
    /// The integration stopped after an earlier failure; requests fail with it.
    case integrationFailed(String)
    /// The disk's state file is unreadable or inconsistent.
    case state(path: String, reason: String)
    /// Images of one disk that do not fit together (sizes, cluster sizes).
    case mismatch(String)

    public var description: String {
        switch self {
        case .image(let error): return "\(error)"
        case .protocolViolation(let error): return "disk integration protocol violation: \(error)"
        case .outOfRange(let offset, let length, let size):
            return "request of \(length) bytes at offset \(offset) is outside the \(size)-byte disk"
        case .integrationFailed(let reason): return "the disk integration failed: \(reason)"
        case .state(let path, let reason): return "disk state \(path): \(reason)"
        case .mismatch(let what): return "disk images do not fit together: \(what)"
        }
    }
}
