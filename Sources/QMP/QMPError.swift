/// Everything that can go wrong talking QMP.
///
/// Only ``commandFailed(command:errorClass:description:)`` and the argument and
/// result conversion errors leave the connection usable; every other case means
/// the connection is closed (or was never opened).
public enum QMPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The Unix socket could not be connected (`reason` is the system's message).
    case connectionFailed(path: String, reason: String)
    /// Greeting and capability negotiation did not finish within the allowed time.
    case timedOut(after: Duration)
    /// QEMU answered the command with an error reply. The connection stays open.
    /// `errorClass` is QMP's `class` (`GenericError`, `CommandNotFound`,
    /// `DeviceNotFound`, ...); `description` is QMP's `desc`.
    case commandFailed(command: String, errorClass: String, description: String)
    /// The connection is closed: QEMU hung up, an I/O or protocol error closed it,
    /// or `close()` was called. Pending and later requests fail with this.
    case disconnected
    /// QEMU sent something that is not valid QMP (not JSON, not an object, a
    /// reply to no request of ours, a second greeting, ...). The string says what
    /// and quotes the message (shortened). The connection is closed.
    case protocolViolation(String)
    /// A line exceeded the decoder's maximum line length. The connection is closed.
    case lineTooLong(limit: Int)
    /// The socket reported an error (`reason` is the system's message). The connection is closed.
    case ioError(String)
    /// The command's arguments could not be encoded as a JSON object.
    case invalidArguments(command: String, reason: String)
    /// The command succeeded but its `return` value did not decode as the requested type.
    case resultDecodingFailed(command: String, type: String, result: JSONValue, reason: String)

    public var description: String {
        switch self {
        case .connectionFailed(let path, let reason):
            return "cannot connect to the QMP socket at \(path): \(reason). "
                + "Check that QEMU is running with -qmp unix:\(path),server=on,wait=off and that the path is right."
        case .timedOut(let duration):
            return "QMP greeting and capability negotiation did not finish within \(duration). "
                + "QEMU may be stuck, or another client is already connected (a QMP socket serves one client at a time)."
        case .commandFailed(let command, let errorClass, let description):
            return "QMP command '\(command)' failed with \(errorClass): \(description)"
        case .disconnected:
            return "the QMP connection is closed (QEMU exited or hung up, an error closed it, or close() was called); "
                + "connect again to send more commands"
        case .protocolViolation(let detail):
            return "QMP protocol violation, connection closed: \(detail)"
        case .lineTooLong(let limit):
            return "QEMU sent a QMP message longer than \(limit) bytes; connection closed. "
                + "Raise maximumLineLength if replies this large are expected."
        case .ioError(let reason):
            return "I/O error on the QMP socket, connection closed: \(reason)"
        case .invalidArguments(let command, let reason):
            return "arguments for QMP command '\(command)' are not a JSON object: \(reason)"
        case .resultDecodingFailed(let command, let type, let result, let reason):
            return "result of QMP command '\(command)' does not decode as \(type): \(reason); result was \(result)"
        }
    }
}
