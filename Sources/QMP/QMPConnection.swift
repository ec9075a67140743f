import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a ``QMPClient`` connection ended.
public enum QMPCloseReason: Sendable, Equatable {
    /// `close()` was called (or the handshake was abandoned by `connect`).
    case closedByClient
    /// QEMU closed the socket (end of file), for example after `quit` or when it exited.
    case closedByPeer
    /// An error closed the connection: a protocol violation, an over-long line,
    /// an I/O error, or a handshake timeout.
    case failed(QMPError)
}

/// The shared, lock-protected state of one connection: pending requests,
/// event subscribers and the greeting. The channel handler feeds it from the
/// event loop; client calls reach it from any task. Continuations are always
/// resumed and streams finished outside the lock.
final class QMPConnection: Sendable {
    private struct Pending {
        var command: String
        var continuation: CheckedContinuation<JSONValue, any Error>
    }

    private struct State {
        var greeting: QMPGreeting?
        var greetingWaiter: CheckedContinuation<QMPGreeting, any Error>?
        var handshakeComplete = false
        var closeReason: QMPCloseReason?
        var nextID: Int64 = 1
        var pending: [Int64: Pending] = [:]
        /// Requests whose caller was cancelled after sending; their replies are dropped silently.
        var abandoned: Set<Int64> = []
        /// Requests cancelled before they were registered; they are never sent.
        var cancelledEarly: Set<Int64> = []
        var subscribers: [Int: AsyncStream<QMPEvent>.Continuation] = [:]
        var nextSubscriberID = 0
    }

    private let state = Mutex(State())

    var closeReason: QMPCloseReason? { self.state.withLock { $0.closeReason } }

    // MARK: Client side

    /// Waits for the server greeting (which may already have arrived).
    func waitForGreeting() async throws -> QMPGreeting {
        try await withCheckedThrowingContinuation { continuation in
            let result: Result<QMPGreeting, QMPError>? = self.state.withLock { state in
                if let greeting = state.greeting { return .success(greeting) }
                if state.closeReason != nil { return .failure(.disconnected) }
                state.greetingWaiter = continuation
                return nil
            }
            if let result { continuation.resume(with: result) }
        }
    }

    /// Marks negotiation done so a late handshake timeout no longer applies. `false` if already closed.
    func completeHandshake() -> Bool {
        self.state.withLock { state in
            guard state.closeReason == nil else { return false }
            state.handshakeComplete = true
            return true
        }
    }

    /// Closes for `reason` unless the handshake already completed. `true` if it closed.
    func failHandshake(_ reason: QMPError) -> Bool {
        self.terminate(.failed(reason), unlessHandshakeComplete: true)
    }

    func execute(_ command: String, arguments: [String: JSONValue]?, on channel: any Channel) async throws -> JSONValue {
        let id = self.state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        var message: [String: JSONValue] = ["execute": .string(command), "id": .int(id)]
        if let arguments { message["arguments"] = .object(arguments) }
        var buffer: ByteBuffer
        do {
            let bytes = try JSONValue.object(message).serialized()
            buffer = channel.allocator.buffer(capacity: bytes.count + 1)
            buffer.writeBytes(bytes)
            buffer.writeInteger(UInt8(ascii: "\n"))
        } catch {
            throw QMPError.invalidArguments(command: command, reason: "\(error)")
        }
        let line = buffer

        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                enum Outcome { case registered, closed, cancelled }
                let outcome: Outcome = self.state.withLock { state in
                    if state.closeReason != nil { return .closed }
                    if state.cancelledEarly.remove(id) != nil { return .cancelled }
                    state.pending[id] = Pending(command: command, continuation: continuation)
                    return .registered
                }
                switch outcome {
                case .closed: continuation.resume(throwing: QMPError.disconnected)
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .registered:
                    // Registered before writing, so the reply cannot overtake the registration.
                    channel.writeAndFlush(line).whenFailure { _ in
                        let pending = self.state.withLock { $0.pending.removeValue(forKey: id) }
                        pending?.continuation.resume(throwing: QMPError.disconnected)
                    }
                }
            }
        } onCancel: {
            // QMP cannot cancel a command; the caller stops waiting and the reply is dropped.
            let pending: Pending? = self.state.withLock { state in
                if let pending = state.pending.removeValue(forKey: id) {
                    state.abandoned.insert(id)
                    return pending
                }
                // Not registered yet (or already answered, in which case this entry is a harmless leftover).
                state.cancelledEarly.insert(id)
                return nil
            }
            pending?.continuation.resume(throwing: CancellationError())
        }
    }

    func subscribe(bufferingNewest limit: Int) -> AsyncStream<QMPEvent> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: QMPEvent.self, bufferingPolicy: .bufferingNewest(max(1, limit)))
        let token = self.state.withLock { state in
            defer { state.nextSubscriberID += 1 }
            return state.nextSubscriberID
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: token) }
        }
        let added = self.state.withLock { state in
            guard state.closeReason == nil else { return false }
            state.subscribers[token] = continuation
            return true
        }
        if !added { continuation.finish() }
        return stream
    }

    // MARK: Event-loop side

    /// Ends the connection once: fails every pending request with `.disconnected`,
    /// finishes event streams. Later calls do nothing. Returns whether this call ended it.
    @discardableResult
    func terminate(_ reason: QMPCloseReason, unlessHandshakeComplete: Bool = false) -> Bool {
        typealias Taken = (
            pending: [Pending], greetingWaiter: CheckedContinuation<QMPGreeting, any Error>?,
            subscribers: [AsyncStream<QMPEvent>.Continuation]
        )
        let taken: Taken? = self.state.withLock { state in
            guard state.closeReason == nil, !(unlessHandshakeComplete && state.handshakeComplete) else { return nil }
            state.closeReason = reason
            let taken = (Array(state.pending.values), state.greetingWaiter, Array(state.subscribers.values))
            state.pending = [:]
            state.greetingWaiter = nil
            state.subscribers = [:]
            state.abandoned = []
            state.cancelledEarly = []
            return taken
        }
        guard let (pending, greetingWaiter, subscribers) = taken else { return false }
        for request in pending { request.continuation.resume(throwing: QMPError.disconnected) }
        greetingWaiter?.resume(throwing: QMPError.disconnected)
        for subscriber in subscribers { subscriber.finish() }
        return true
    }

    /// Handles one received line. Returns `false` if the connection must be closed
    /// (a protocol violation, already recorded as the close reason).
    func receive(line: ByteBuffer) -> Bool {
        let bytes = line.readableBytesView
        guard bytes.contains(where: { !Self.isJSONWhitespace($0) }) else { return true }
        let message: JSONValue
        do {
            message = try JSONValue(parsing: bytes)
        } catch {
            return self.violation("\(error) in \(Self.excerpt(line))")
        }
        guard case .object(let members) = message else {
            return self.violation("message is not a JSON object: \(Self.excerpt(line))")
        }
        if members["QMP"] != nil {
            return self.receiveGreeting(message, line: line)
        } else if members["event"] != nil {
            return self.receiveEvent(members, line: line)
        } else if members["return"] != nil || members["error"] != nil {
            return self.receiveReply(members, line: line)
        } else {
            return self.violation("message is neither greeting, reply nor event: \(Self.excerpt(line))")
        }
    }

    private func receiveGreeting(_ message: JSONValue, line: ByteBuffer) -> Bool {
        guard let greeting = QMPGreeting(message) else {
            return self.violation("malformed greeting: \(Self.excerpt(line))")
        }
        let outcome: (waiter: CheckedContinuation<QMPGreeting, any Error>?, duplicate: Bool) = self.state.withLock { state in
            if state.greeting != nil { return (nil, true) }
            state.greeting = greeting
            defer { state.greetingWaiter = nil }
            return (state.greetingWaiter, false)
        }
        if outcome.duplicate { return self.violation("second greeting: \(Self.excerpt(line))") }
        outcome.waiter?.resume(returning: greeting)
        return true
    }

    private func receiveEvent(_ members: [String: JSONValue], line: ByteBuffer) -> Bool {
        guard let name = members["event"]?.stringValue,
            let seconds = members["timestamp"]?["seconds"]?.int64Value,
            let microseconds = members["timestamp"]?["microseconds"]?.int64Value
        else {
            return self.violation("malformed event: \(Self.excerpt(line))")
        }
        let event = QMPEvent(
            name: name, data: members["data"] ?? .object([:]),
            timestamp: .init(seconds: seconds, microseconds: microseconds))
        let subscribers = self.state.withLock { Array($0.subscribers.values) }
        for subscriber in subscribers { subscriber.yield(event) }
        return true
    }

    private func receiveReply(_ members: [String: JSONValue], line: ByteBuffer) -> Bool {
        enum Outcome { case success(JSONValue), failure(errorClass: String, description: String) }
        let outcome: Outcome
        if let error = members["error"] {
            guard let errorClass = error["class"]?.stringValue, let description = error["desc"]?.stringValue else {
                return self.violation("malformed error reply: \(Self.excerpt(line))")
            }
            outcome = .failure(errorClass: errorClass, description: description)
        } else {
            outcome = .success(members["return"] ?? .null)
        }
        guard let id = members["id"]?.int64Value else {
            if case .failure(let errorClass, let description) = outcome {
                // QEMU answers without an id when it could not parse a request at all.
                return self.violation("error reply without id (\(errorClass): \(description))")
            }
            return self.violation("reply without id: \(Self.excerpt(line))")
        }
        enum Match { case pending(Pending), abandoned, unknown }
        let match: Match = self.state.withLock { state in
            if let pending = state.pending.removeValue(forKey: id) { return .pending(pending) }
            if state.abandoned.remove(id) != nil { return .abandoned }
            return .unknown
        }
        switch match {
        case .pending(let request):
            switch outcome {
            case .success(let value):
                request.continuation.resume(returning: value)
            case .failure(let errorClass, let description):
                request.continuation.resume(
                    throwing: QMPError.commandFailed(
                        command: request.command, errorClass: errorClass, description: description))
            }
            return true
        case .abandoned:
            return true
        case .unknown:
            return self.violation("reply with unknown id \(id): \(Self.excerpt(line))")
        }
    }

    private func violation(_ detail: String) -> Bool {
        self.terminate(.failed(.protocolViolation(detail)))
        return false
    }

    private static func isJSONWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }

    private static func excerpt(_ line: ByteBuffer, limit: Int = 300) -> String {
        let text = String(decoding: line.readableBytesView.prefix(limit), as: UTF8.self)
        return line.readableBytes > limit ? text + "… (\(line.readableBytes) bytes)" : text
    }
}

/// Feeds decoded lines into a ``QMPConnection`` and closes the channel when it must.
final class QMPChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let connection: QMPConnection

    init(connection: QMPConnection) {
        self.connection = connection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !self.connection.receive(line: self.unwrapInboundIn(data)) {
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let reason: QMPCloseReason
        if let error = error as? QMPError {
            reason = .failed(error)
        } else if let error = error as? IOError, error.errnoCode == ECONNRESET || error.errnoCode == EPIPE {
            // QEMU exiting with unread or unsent data shows up as a reset, not EOF.
            reason = .closedByPeer
        } else {
            reason = .failed(.ioError("\(error)"))
        }
        self.connection.terminate(reason)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.connection.terminate(.closedByPeer)
        context.fireChannelInactive()
    }
}
