import NBDProtocol
import NIOCore
import NIOPosix
import Synchronization

/// A byte-for-byte NBD client for driving the server in tests: it sends
/// exactly what the test says (hostile bytes included) and reads replies by
/// count, with deadlines.
final class RawClient: Sendable {
    let channel: any Channel
    private let inbox: Inbox

    final class Inbox: Sendable {
        let state = Mutex<(bytes: [UInt8], closed: Bool)>(([], false))
    }

    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let inbox: Inbox
        init(_ inbox: Inbox) { self.inbox = inbox }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = Self.unwrapInboundIn(data)
            inbox.state.withLock { $0.bytes += buffer.readableBytesView }
        }

        func channelInactive(context: ChannelHandlerContext) {
            inbox.state.withLock { $0.closed = true }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            inbox.state.withLock { $0.closed = true }
            context.close(promise: nil)
        }
    }

    private init(channel: any Channel, inbox: Inbox) {
        self.channel = channel
        self.inbox = inbox
    }

    static func connect(_ path: String) async throws -> RawClient {
        let inbox = Inbox()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(inbox))
                }
            }
            .connect(unixDomainSocketPath: path)
            .get()
        return RawClient(channel: channel, inbox: inbox)
    }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
    }

    /// Exactly `count` bytes, waiting at most `timeout`.
    func receive(_ count: Int, timeout: Duration = .seconds(10)) async throws -> [UInt8] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (taken, closed, have): ([UInt8]?, Bool, Int) = inbox.state.withLock { state in
                guard state.bytes.count >= count else { return (nil, state.closed, state.bytes.count) }
                defer { state.bytes.removeFirst(count) }
                return (Array(state.bytes.prefix(count)), state.closed, state.bytes.count)
            }
            if let taken { return taken }
            if closed { throw TestFailure("connection closed with \(have) of \(count) bytes received") }
            if ContinuousClock.now > deadline { throw TestFailure("timed out with \(have) of \(count) bytes received") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    /// True once the server has closed the connection (unread bytes are dropped).
    func closedByServer(timeout: Duration = .seconds(10)) async -> Bool {
        await eventually(timeout: timeout) { inbox.state.withLock { $0.closed } }
    }

    /// Bytes received and not yet taken.
    var pending: Int { inbox.state.withLock { $0.bytes.count } }

    func close() async {
        try? await channel.close().get()
    }

    // MARK: Protocol steps

    /// Reads the greeting and answers with `flags`.
    @discardableResult
    func greet(flags: NBDClientFlags = [.fixedNewstyle, .noZeroes]) async throws -> NBDGreeting {
        let greeting = try NBDGreeting.decode(try await receive(NBD.greetingSize))
        var bytes: [UInt8] = []
        let raw = flags.rawValue
        bytes += [UInt8(raw >> 24), UInt8(raw >> 16 & 0xff), UInt8(raw >> 8 & 0xff), UInt8(raw & 0xff)]
        try await send(bytes)
        return greeting
    }

    /// Reads one option reply.
    func optionReply() async throws -> NBDOptionReply {
        let head = try await receive(NBD.optionReplyHeaderSize)
        let length = Int(head[16]) << 24 | Int(head[17]) << 16 | Int(head[18]) << 8 | Int(head[19])
        let data = try await receive(length)
        guard let (reply, _) = try NBDOptionReply.decode(head + data) else { throw TestFailure("short option reply") }
        return reply
    }

    /// Sends an option and reads replies up to the final one (ACK or an error).
    func option(_ option: NBDOption) async throws -> [NBDOptionReply] {
        try await send(option.encoded())
        var replies: [NBDOptionReply] = []
        while true {
            let reply = try await optionReply()
            replies.append(reply)
            if reply.type == .ack || reply.type.isError { return replies }
        }
    }

    /// Greets and enters transmission with NBD_OPT_GO; returns the export's
    /// size and flags.
    func go(_ name: String) async throws -> (size: UInt64, flags: NBDTransmissionFlags) {
        try await greet()
        let replies = try await option(.go(NBDInfoRequest(name: name, items: [.blockSize])))
        guard replies.last?.type == .ack else {
            throw TestFailure("NBD_OPT_GO '\(name)' failed: \(replies.last.map { "\($0.type) \($0.message)" } ?? "-")")
        }
        for reply in replies where reply.type == .info {
            if case .export(let size, let flags) = try NBDInfo.decode(reply.data) { return (size, flags) }
        }
        throw TestFailure("no NBD_INFO_EXPORT")
    }

    func request(_ request: NBDRequest, payload: [UInt8] = []) async throws {
        try await send(request.encodedHeader() + payload)
    }

    /// Reads one simple reply; `dataLength` bytes of data follow a successful READ.
    func reply(dataLength: Int = 0) async throws -> (reply: NBDSimpleReply, data: [UInt8]) {
        guard let reply = try NBDSimpleReply.decode(try await receive(NBDSimpleReply.headerSize)) else {
            throw TestFailure("short reply")
        }
        let data = reply.error == nil && dataLength > 0 ? try await receive(dataLength) : []
        return (reply, data)
    }

    /// One request, one reply.
    func roundTrip(_ request: NBDRequest, payload: [UInt8] = []) async throws -> (reply: NBDSimpleReply, data: [UInt8]) {
        try await self.request(request, payload: payload)
        return try await reply(dataLength: request.type == .read ? Int(request.length) : 0)
    }
}
