/// An asynchronous QMP event, such as `SHUTDOWN`, `STOP` or `BLOCK_JOB_COMPLETED`.
public struct QMPEvent: Sendable, Hashable, CustomStringConvertible {
    /// When QEMU emitted the event (host wall clock).
    public struct Timestamp: Sendable, Hashable {
        public var seconds: Int64
        public var microseconds: Int64

        public init(seconds: Int64, microseconds: Int64) {
            self.seconds = seconds
            self.microseconds = microseconds
        }

        public var secondsSince1970: Double { Double(self.seconds) + Double(self.microseconds) / 1_000_000 }
    }

    /// The event name, for example `"SHUTDOWN"`.
    public var name: String
    /// The event's `data` member; an empty object when the event has none.
    public var data: JSONValue
    public var timestamp: Timestamp

    public init(name: String, data: JSONValue = .object([:]), timestamp: Timestamp) {
        self.name = name
        self.data = data
        self.timestamp = timestamp
    }

    public var description: String { "\(self.name) \(self.data) at \(self.timestamp.secondsSince1970)" }
}

/// The server greeting, `{"QMP": {"version": {...}, "capabilities": [...]}}`.
public struct QMPGreeting: Sendable, Hashable {
    public var major: Int
    public var minor: Int
    public var micro: Int
    /// QEMU's package string (often empty, or a distribution version such as `"Debian 1:7.2+dfsg-7"`).
    public var package: String
    /// Capabilities the server offers (for example `"oob"`). This client enables none of them.
    public var capabilities: [String]
    /// The greeting exactly as received.
    public var raw: JSONValue

    /// `"7.2.0"`.
    public var versionString: String { "\(self.major).\(self.minor).\(self.micro)" }

    /// Parses a greeting message; `nil` if the message is not a well-formed greeting.
    init?(_ message: JSONValue) {
        guard let body = message["QMP"],
            let qemu = body["version"]?["qemu"],
            let major = qemu["major"]?.intValue,
            let minor = qemu["minor"]?.intValue,
            let micro = qemu["micro"]?.intValue,
            let capabilities = body["capabilities"]?.arrayValue
        else { return nil }
        self.major = major
        self.minor = minor
        self.micro = micro
        self.package = body["version"]?["package"]?.stringValue ?? ""
        self.capabilities = capabilities.compactMap(\.stringValue)
        self.raw = message
    }
}
