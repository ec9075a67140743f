import NIOCore
import NIOPosix

/// A QMP (QEMU Machine Protocol) client over a Unix socket.
///
/// ```swift
/// let qmp = try await QMPClient.connect(unixSocketPath: "/run/vm/qmp.sock")
/// let events = qmp.events()
/// let status = try await qmp.execute("query-status")
/// print(status["status"]?.stringValue ?? "?")
/// ```
///
/// Commands may be issued concurrently from any number of tasks; replies are
/// matched to requests by id. I/O runs on `MultiThreadedEventLoopGroup.singleton`.
///
/// The connection closes on `close()`, when QEMU hangs up, on an I/O error, or
/// on a protocol violation (invalid JSON, a reply to an id that was never sent,
/// a line over the length cap). Then every pending request fails with
/// ``QMPError/disconnected``, later requests fail with it at once, every event
/// stream finishes, and ``closeReason`` says why. Releasing the last reference
/// to a client also closes its connection.
public final class QMPClient: Sendable {
    /// The server's greeting: QEMU version, package string and capabilities.
    public let greeting: QMPGreeting

    private let channel: any Channel
    private let connection: QMPConnection

    private init(channel: any Channel, connection: QMPConnection, greeting: QMPGreeting) {
        self.channel = channel
        self.connection = connection
        self.greeting = greeting
    }

    deinit {
        self.channel.close(promise: nil)
    }

    /// Connects to QEMU's QMP socket, reads the greeting and negotiates capabilities
    /// (`qmp_capabilities`, no optional capabilities enabled).
    ///
    /// - Parameters:
    ///   - timeout: bounds connecting, the greeting and negotiation together.
    ///   - maximumLineLength: the largest message accepted, in bytes; a longer one
    ///     closes the connection with ``QMPError/lineTooLong(limit:)``.
    /// - Throws: ``QMPError/connectionFailed(path:reason:)``, ``QMPError/timedOut(after:)``,
    ///   ``QMPError/protocolViolation(_:)``, ``QMPError/lineTooLong(limit:)``,
    ///   ``QMPError/commandFailed(command:errorClass:description:)`` if QEMU rejects
    ///   negotiation, or ``QMPError/disconnected`` if QEMU hangs up first.
    public static func connect(
        unixSocketPath: String,
        timeout: Duration = .seconds(10),
        maximumLineLength: Int = QMPFrameDecoder.defaultMaximumLineLength
    ) async throws -> QMPClient {
        let connection = QMPConnection()
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(TimeAmount(timeout))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let decoder = QMPFrameDecoder(maximumLineLength: maximumLineLength)
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(decoder))
                        try channel.pipeline.syncOperations.addHandler(QMPChannelHandler(connection: connection))
                    }
                }
                .connect(unixDomainSocketPath: unixSocketPath)
                .get()
        } catch {
            throw QMPError.connectionFailed(path: unixSocketPath, reason: "\(error)")
        }

        let timer = channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            if connection.failHandshake(.timedOut(after: timeout)) {
                channel.close(promise: nil)
            }
        }
        do {
            let greeting = try await connection.waitForGreeting()
            _ = try await connection.execute("qmp_capabilities", arguments: nil, on: channel)
            guard connection.completeHandshake() else { throw QMPError.disconnected }
            timer.cancel()
            return QMPClient(channel: channel, connection: connection, greeting: greeting)
        } catch {
            timer.cancel()
            connection.terminate(.closedByClient)
            channel.close(promise: nil)
            if case .failed(let reason)? = connection.closeReason { throw reason }
            throw error
        }
    }

    /// Runs a command and returns its `return` value.
    ///
    /// - Throws: ``QMPError/commandFailed(command:errorClass:description:)`` for an
    ///   error reply, ``QMPError/disconnected`` if the connection is or becomes closed,
    ///   ``QMPError/invalidArguments(command:reason:)`` if the arguments cannot be
    ///   encoded (non-finite numbers), `CancellationError` if the calling task is
    ///   cancelled (QEMU still runs the command; its reply is discarded).
    public func execute(_ command: String, arguments: [String: JSONValue]? = nil) async throws -> JSONValue {
        try await self.connection.execute(command, arguments: arguments, on: self.channel)
    }

    /// Runs a command whose arguments are any `Encodable` value that encodes as a JSON object.
    ///
    /// A dictionary literal of uniform values (`["id": "drive0"]`) may resolve to this
    /// overload; the JSON sent is the same either way.
    public func execute(_ command: String, arguments: some Encodable) async throws -> JSONValue {
        try await self.connection.execute(command, arguments: try Self.object(arguments, command: command), on: self.channel)
    }

    /// Runs a command and decodes its `return` value as `R`.
    ///
    /// - Throws: as the untyped `execute`, plus
    ///   ``QMPError/resultDecodingFailed(command:type:result:reason:)``.
    public func execute<R: Decodable>(
        _ command: String, arguments: [String: JSONValue]? = nil, as type: R.Type
    ) async throws -> R {
        let result = try await self.connection.execute(command, arguments: arguments, on: self.channel)
        return try Self.decode(result, as: R.self, command: command)
    }

    /// Runs a command with `Encodable` arguments and decodes its `return` value as `R`.
    public func execute<R: Decodable>(
        _ command: String, arguments: some Encodable, as type: R.Type
    ) async throws -> R {
        let object = try Self.object(arguments, command: command)
        let result = try await self.connection.execute(command, arguments: object, on: self.channel)
        return try Self.decode(result, as: R.self, command: command)
    }

    /// A new stream of the events received from now on; each call gets its own stream.
    ///
    /// The stream buffers at most `limit` events that its consumer has not taken
    /// yet; when full, the oldest buffered event is dropped. It finishes when the
    /// connection closes (at once if it already has), after the events received
    /// before the close. Events that arrive while no stream exists are not kept.
    public func events(bufferingNewest limit: Int = 1024) -> AsyncStream<QMPEvent> {
        self.connection.subscribe(bufferingNewest: limit)
    }

    /// `nil` while connected; afterwards why the connection ended.
    public var closeReason: QMPCloseReason? { self.connection.closeReason }

    public var isConnected: Bool { self.closeReason == nil }

    /// Closes the connection and waits for the socket to close. Idempotent.
    public func close() async {
        self.connection.terminate(.closedByClient)
        self.channel.close(promise: nil)
        _ = try? await self.channel.closeFuture.get()
    }

    private static func decode<R: Decodable>(_ result: JSONValue, as type: R.Type, command: String) throws -> R {
        do {
            return try result.decode(as: R.self)
        } catch {
            throw QMPError.resultDecodingFailed(
                command: command, type: String(describing: R.self), result: result, reason: "\(error)")
        }
    }

    private static func object(_ arguments: some Encodable, command: String) throws -> [String: JSONValue] {
        let value: JSONValue
        do {
            value = try JSONValue(encoding: arguments)
        } catch {
            throw QMPError.invalidArguments(command: command, reason: "\(error)")
        }
        guard case .object(let members) = value else {
            throw QMPError.invalidArguments(command: command, reason: "encodes as \(value), not an object")
        }
        return members
    }
}
