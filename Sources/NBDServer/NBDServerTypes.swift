import NBDProtocol

/// What goes wrong setting up or managing the server. Nothing a client does
/// raises one of these: client problems are logged and end that connection.
public enum NBDServerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The path exists and is not a socket; it is left alone.
    case notASocket(path: String)
    /// Another process accepts connections on this socket.
    case socketInUse(path: String)
    /// socket/bind/listen failed (`reason` is the system's message).
    case listenFailed(address: String, reason: String)
    case exportExists(name: String)
    case noSuchExport(name: String)
    case invalidExportName(name: String, reason: String)
    /// `shutdown()` was called; the server takes no new listeners or exports.
    case shutDown

    public var description: String {
        switch self {
        case .notASocket(let path):
            return "\(path) exists and is not a socket; refusing to replace it"
        case .socketInUse(let path):
            return "another server is listening on \(path)"
        case .listenFailed(let address, let reason):
            return "cannot listen on \(address): \(reason)"
        case .exportExists(let name):
            return "an export named '\(name)' already exists (use replaceExport to swap it)"
        case .noSuchExport(let name):
            return "no export named '\(name)'"
        case .invalidExportName(let name, let reason):
            return "invalid export name '\(name)': \(reason)"
        case .shutDown:
            return "the NBD server is shut down"
        }
    }
}

/// One log line from the server.
public struct NBDLogRecord: Sendable, CustomStringConvertible {
    public enum Level: Int, Sendable, Comparable, CustomStringConvertible {
        /// Every request refused, every connection step.
        case debug
        /// Connections opened and closed, exports added and removed.
        case info
        /// A client broke the protocol; its connection was closed.
        case warning
        /// An export failed a request (the client got `NBD_EIO` or similar).
        case error

        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }

        public var description: String {
            switch self {
            case .debug: "debug"
            case .info: "info"
            case .warning: "warning"
            case .error: "error"
            }
        }
    }

    public var level: Level
    /// The connection's number (1, 2, ... in accept order), if about one.
    public var connection: UInt64?
    /// The export concerned, if known.
    public var export: String?
    public var message: String

    public var description: String {
        var text = "nbd \(level)"
        if let connection { text += " conn \(connection)" }
        if let export { text += " export '\(export)'" }
        return text + ": " + message
    }
}

/// Counters of one export since it was added.
public struct NBDExportStatistics: Sendable, Hashable {
    /// Connections in the transmission phase on this export now.
    public var openConnections = 0
    /// Connections that ever chose this export.
    public var totalConnections: UInt64 = 0
    /// Requests answered, by kind (refused requests included).
    public var reads: UInt64 = 0
    public var writes: UInt64 = 0
    public var flushes: UInt64 = 0
    public var trims: UInt64 = 0
    public var writeZeroes: UInt64 = 0
    /// Bytes returned by successful reads and accepted by successful writes.
    public var bytesRead: UInt64 = 0
    public var bytesWritten: UInt64 = 0
    /// Requests answered with an error (refused or failed).
    public var errors: UInt64 = 0

    public init() {}
}
