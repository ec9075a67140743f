import Foundation
import NIOCore
import NIOPosix
import Synchronization

@testable import QMP

/// An in-process QMP server on a Unix socket in a fresh temporary directory.
///
/// It sends `greeting` when a client connects and answers `qmp_capabilities`
/// itself; every other request is handed to the test through ``nextRequest()``,
/// and the test answers with ``send(_:)`` (raw lines, so it can also send
/// garbage) or hangs up with ``drop()``. Serves one client at a time.
final class FakeQMPServer: Sendable {
    static let defaultGreeting =
        #"{"QMP": {"version": {"qemu": {"micro": 1, "minor": 2, "major": 7}, "package": "Fake 7.2.1"}, "capabilities": ["oob"]}}"#

    let directory: URL
    let path: String
    private let serverChannel: any Channel
    private let client: ClientBox
    private let requests: AsyncStream<JSONValue>
    private let requestsContinuation: AsyncStream<JSONValue>.Continuation

    private init(
        directory: URL, path: String, serverChannel: any Channel, client: ClientBox,
        requests: AsyncStream<JSONValue>, continuation: AsyncStream<JSONValue>.Continuation
    ) {
        self.client = client
        self.directory = directory
        self.path = path
        self.serverChannel = serverChannel
        self.requests = requests
        self.requestsContinuation = continuation
    }

    /// - Parameter greeting: the first line sent to a client, or `nil` to send nothing.
    static func start(greeting: String? = defaultGreeting) async throws -> FakeQMPServer {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("qmp-test-\(UUID().uuidString.prefix(8))", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("qmp.sock").path
        let (requests, continuation) = AsyncStream.makeStream(of: JSONValue.self)
        let client = ClientBox()
        let serverChannel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(QMPFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(
                        FakeServerHandler(greeting: greeting, requests: continuation, onActive: { client.channel.withLock { $0 = channel } }))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
            .get()
        return FakeQMPServer(
            directory: directory, path: path, serverChannel: serverChannel, client: client,
            requests: requests, continuation: continuation)
    }

    /// The next request other than `qmp_capabilities`.
    func nextRequest() async throws -> JSONValue {
        for await request in self.requests { return request }
        throw QMPError.disconnected
    }

    /// Sends one line (a CRLF is appended) to the connected client.
    func send(_ line: String) async throws {
        guard let channel = self.client.channel.withLock({ $0 }) else { throw QMPError.disconnected }
        try await channel.writeAndFlush(ByteBuffer(string: line + "\r\n"))
    }

    /// `{"return": result, "id": id}` for `request`.
    func reply(to request: JSONValue, with result: JSONValue = .object([:])) async throws {
        try await self.send(JSONValue.object(["return": result, "id": request["id"] ?? .null]).description)
    }

    /// `{"error": {"class": ..., "desc": ...}, "id": id}` for `request`.
    func replyError(to request: JSONValue, errorClass: String, description: String) async throws {
        let error: JSONValue = ["class": .string(errorClass), "desc": .string(description)]
        try await self.send(JSONValue.object(["error": error, "id": request["id"] ?? .null]).description)
    }

    func sendEvent(_ name: String, data: JSONValue? = nil, seconds: Int64 = 1_700_000_000, microseconds: Int64 = 42) async throws {
        var event: [String: JSONValue] = [
            "event": .string(name), "timestamp": ["seconds": .int(seconds), "microseconds": .int(microseconds)],
        ]
        if let data { event["data"] = data }
        try await self.send(JSONValue.object(event).description)
    }

    /// Closes the connection to the client.
    func drop() async {
        guard let channel = self.client.channel.withLock({ $0 }) else { return }
        try? await channel.close()
    }

    func shutdown() async {
        await self.drop()
        try? await self.serverChannel.close()
        self.requestsContinuation.finish()
        try? FileManager.default.removeItem(at: self.directory)
    }
}

/// The accepted client channel, shared between the child channel initializer and the server.
final class ClientBox: Sendable {
    let channel = Mutex<(any Channel)?>(nil)
}

private final class FakeServerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let greeting: String?
    private let requests: AsyncStream<JSONValue>.Continuation
    private let onActive: () -> Void

    init(greeting: String?, requests: AsyncStream<JSONValue>.Continuation, onActive: @escaping () -> Void) {
        self.greeting = greeting
        self.requests = requests
        self.onActive = onActive
    }

    func channelActive(context: ChannelHandlerContext) {
        self.onActive()
        if let greeting {
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: greeting + "\r\n")), promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = self.unwrapInboundIn(data)
        guard let request = try? JSONValue(parsing: line.readableBytesView) else {
            context.close(promise: nil)
            return
        }
        if request["execute"]?.stringValue == "qmp_capabilities" {
            let reply = JSONValue.object(["return": .object([:]), "id": request["id"] ?? .null])
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: reply.description + "\r\n")), promise: nil)
        } else {
            self.requests.yield(request)
        }
    }
}
