import NBDProtocol
import NIOCore
import Synchronization

/// One reply on the wire: a header and, for a successful READ, its data.
/// Written as one outbound message so replies from concurrent requests
/// never interleave.
struct OutboundFrame: Sendable {
    var head: ByteBuffer
    var payload: ByteBuffer?

    init(head: ByteBuffer, payload: ByteBuffer? = nil) {
        self.head = head
        self.payload = payload
    }

    init(bytes: [UInt8]) {
        self.init(head: ByteBuffer(bytes: bytes))
    }
}

final class OutboundFrameEncoder: ChannelOutboundHandler {
    typealias OutboundIn = OutboundFrame
    typealias OutboundOut = ByteBuffer

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = Self.unwrapOutboundIn(data)
        guard let payload = frame.payload else {
            context.write(Self.wrapOutboundOut(frame.head), promise: promise)
            return
        }
        context.write(Self.wrapOutboundOut(frame.head), promise: nil)
        context.write(Self.wrapOutboundOut(payload), promise: promise)
    }
}

/// Sends a connection's replies. Called from the connection's event loop
/// (its request tasks run there), it writes each reply into the channel at
/// once and flushes once per turn of the loop, so the replies of requests
/// that finish together leave in one writev instead of one system call and
/// one wake-up of the client each. When the socket is not writable (the
/// client does not read), the reply goes through the async writer, which
/// waits: the request keeps its place in the in-flight window meanwhile, so
/// unread replies stay bounded by the window.
final class ReplySender: Sendable {
    let channel: any Channel
    let outbound: NIOAsyncChannelOutboundWriter<OutboundFrame>
    private let flushScheduled = Mutex(false)

    init(channel: any Channel, outbound: NIOAsyncChannelOutboundWriter<OutboundFrame>) {
        self.channel = channel
        self.outbound = outbound
    }

    func send(_ frame: OutboundFrame) async {
        guard channel.eventLoop.inEventLoop, channel.isWritable else {
            // A failure here means the connection is gone; nobody is left to tell.
            try? await outbound.write(frame)
            return
        }
        channel.write(frame, promise: nil)
        let schedule = flushScheduled.withLock { scheduled in
            defer { scheduled = true }
            return !scheduled
        }
        if schedule {
            channel.eventLoop.execute {
                self.flushScheduled.withLock { $0 = false }
                self.channel.flush()
            }
        }
    }

    /// Flushes what `send` wrote and not yet flushed (before the connection closes).
    func flush() {
        channel.flush()
    }
}

/// A connection as the server's registry sees it: which export it is bound
/// to, whether it was asked to stop, and a signal when it has finished.
final class NBDConnection: Sendable {
    let id: UInt64
    let channel: any Channel
    let finished = Completion()
    private let state = Mutex<(entry: ExportEntry?, stopping: Bool)>((nil, false))

    init(id: UInt64, channel: any Channel) {
        self.id = id
        self.channel = channel
    }

    var entry: ExportEntry? { state.withLock { $0.entry } }
    var isStopping: Bool { state.withLock { $0.stopping } }

    /// Binds the connection to `entry` unless it was asked to stop.
    func attach(_ entry: ExportEntry) -> Bool {
        state.withLock { state in
            guard !state.stopping else { return false }
            state.entry = entry
            return true
        }
    }

    /// In transmission: stop reading (requests already read are answered
    /// `NBD_ESHUTDOWN`, those in flight finish). In the handshake: close.
    func requestStop() {
        let attached = state.withLock { state in
            state.stopping = true
            return state.entry != nil
        }
        guard attached else {
            channel.close(promise: nil)
            return
        }
        let channel = self.channel
        channel.close(mode: .input).whenFailure { error in
            // Input already closed (the client hung up): the reader is ending anyway.
            if let error = error as? ChannelError, error == .inputClosed || error == .alreadyClosed { return }
            channel.close(promise: nil)
        }
    }
}

/// The bytes a connection has received and not yet consumed.
struct InboundBytes {
    var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    var buffer = ByteBuffer()

    init(_ inbound: NIOAsyncChannelInboundStream<ByteBuffer>) {
        iterator = inbound.makeAsyncIterator()
    }

    /// Appends the next chunk from the socket; false at end of input.
    mutating func readMore() async throws -> Bool {
        guard var chunk = try await iterator.next() else { return false }
        if buffer.readableBytes == 0 {
            buffer = chunk
        } else {
            // Keep the consumed prefix from growing without bound.
            if buffer.readerIndex > buffer.readableBytes { buffer.discardReadBytes() }
            buffer.writeBuffer(&chunk)
        }
        return true
    }

    mutating func consume(_ count: Int) {
        buffer.moveReaderIndex(forwardBy: count)
    }
}

extension NBDServer {
    /// Serves one accepted connection until it ends. Its tasks (the reader
    /// and one per request) run on the connection's event loop.
    func serve(_ channel: NIOAsyncChannel<ByteBuffer, OutboundFrame>) async {
        await withTaskExecutorPreference(EventLoopTaskExecutor(channel.channel.eventLoop)) {
            await serveOnEventLoop(channel)
        }
    }

    private func serveOnEventLoop(_ channel: NIOAsyncChannel<ByteBuffer, OutboundFrame>) async {
        let address = channel.channel.remoteAddress
        let peer = address?.ipAddress.flatMap { ip in address?.port.map { "\(ip) port \($0)" } } ?? "unix socket"
        let registered: NBDConnection? = state.withLock { state in
            guard !state.shuttingDown, state.connections.count < configuration.maximumConnections else { return nil }
            let connection = NBDConnection(id: state.nextConnectionID, channel: channel.channel)
            state.nextConnectionID += 1
            state.connections[connection.id] = connection
            return connection
        }
        guard let connection = registered else {
            log(.warning, "refused a connection from \(peer): shutting down or \(configuration.maximumConnections) connections open")
            channel.channel.close(promise: nil)
            return
        }
        log(.debug, "connected (\(peer))", connection: connection.id)
        let timeout = channel.channel.eventLoop.scheduleTask(in: TimeAmount(configuration.handshakeTimeout)) {
            guard connection.entry == nil else { return }
            self.log(.warning, "handshake not finished within \(self.configuration.handshakeTimeout); closing", connection: connection.id)
            connection.channel.close(promise: nil)
        }
        var reason = "closed"
        do {
            reason = try await channel.executeThenClose { inbound, outbound in
                try await self.run(connection, inbound: inbound, outbound: outbound, handshakeTimeout: timeout)
            }
        } catch {
            reason = "closed: \(error)"
        }
        timeout.cancel()
        let entry = state.withLock { state in
            state.connections.removeValue(forKey: connection.id)
            return connection.entry
        }
        entry?.statistics.withLock { $0.openConnections -= 1 }
        log(.info, reason, connection: connection.id, export: entry?.info.name)
        connection.finished.fire()
    }

    /// The handshake, then the transmission phase. Returns why it ended.
    private func run(
        _ connection: NBDConnection, inbound: NIOAsyncChannelInboundStream<ByteBuffer>,
        outbound: NIOAsyncChannelOutboundWriter<OutboundFrame>, handshakeTimeout: Scheduled<Void>
    ) async throws -> String {
        var input = InboundBytes(inbound)
        var handshake = NBDHandshake(configuration: .init(blockSizes: configuration.blockSizes))
        try await outbound.write(OutboundFrame(bytes: handshake.greeting))
        while true {
            let (catalog, entries) = state.withLock { ($0.catalog, $0.exports) }
            let step = handshake.receive(input.buffer.readableBytesView, catalog: catalog)
            input.consume(step.consumed)
            if !step.output.isEmpty { try await outbound.write(OutboundFrame(bytes: step.output)) }
            switch step.outcome {
            case .transmission(let session):
                let name = session.export.name
                // The export must still be the object advertised a moment ago.
                let attached: ExportEntry? = state.withLock { state in
                    guard let entry = entries[name], state.exports[name] === entry, connection.attach(entry) else {
                        return nil
                    }
                    entry.statistics.withLock { stats in
                        stats.openConnections += 1
                        stats.totalConnections += 1
                    }
                    return entry
                }
                guard let entry = attached else { return "export '\(name)' went away during the handshake" }
                handshakeTimeout.cancel()
                let flags = String(session.export.transmissionFlags.rawValue, radix: 16)
                log(.info, "transmission (\(session.export.size) bytes, flags 0x\(flags))", connection: connection.id, export: name)
                return await transmit(session, entry: entry, connection: connection, input: &input, outbound: outbound)
            case .aborted:
                return "client aborted the handshake"
            case .violation(let error):
                log(.warning, "handshake: \(error)", connection: connection.id)
                return "protocol violation: \(error)"
            case nil:
                if step.needsMoreInput, try await !input.readMore() { return "client left during the handshake" }
            }
        }
    }

    /// Reads requests and runs each as a child task until the client
    /// disconnects, breaks the protocol, or the connection is stopped.
    private func transmit(
        _ session: NBDSession, entry: ExportEntry, connection: NBDConnection, input: inout InboundBytes,
        outbound: NIOAsyncChannelOutboundWriter<OutboundFrame>
    ) async -> String {
        var decoder = NBDRequestDecoder(session: session, maximumDiscard: configuration.maximumWriteDiscard)
        let window = RequestWindow(
            maximumCount: configuration.maximumRequestsInFlight, maximumBytes: configuration.maximumBytesInFlight)
        let replies = ReplySender(channel: connection.channel, outbound: outbound)
        // Every request task has ended when the group returns; their replies
        // are written, maybe not flushed yet.
        defer { replies.flush() }
        return await withDiscardingTaskGroup { group in
            while true {
                // Everything already buffered, request by request.
                while true {
                    let next: (consumed: Int, event: NBDRequestDecoder.Event)?
                    do {
                        next = try decoder.decode(input.buffer.readableBytesView)
                    } catch {
                        log(.warning, "\(error); closing", connection: connection.id, export: entry.info.name)
                        connection.channel.close(promise: nil)
                        return "protocol violation: \(error)"
                    }
                    guard let (consumed, event) = next else { break }
                    let request: NBDRequest
                    var payload: ByteBuffer?
                    switch event {
                    case .dropped:
                        input.consume(consumed)
                        continue
                    case .oversizedWrite(let oversized):
                        request = oversized
                    case .request(let decoded):
                        request = decoded
                        input.consume(NBDRequest.headerSize)
                        if decoded.type == .write {
                            guard let data = input.buffer.readSlice(length: Int(decoded.length)) else {
                                connection.channel.close(promise: nil)
                                return "internal error: write payload missing"
                            }
                            payload = data
                        }
                    }
                    var verdict = session.validate(request)
                    if verdict == .perform(.disconnect) { return "client disconnected (NBD_CMD_DISC)" }
                    let ticket = await window.admit(cost: RequestWindow.cost(of: verdict), isWrite: Self.isWrite(verdict))
                    // Checked after waiting for room: the stop may have come meanwhile.
                    if connection.isStopping { verdict = .reject(.shutdown, "the export is going away") }
                    group.addTask {
                        await NBDRequestContext.$requestsInFlight.withValue(window.inFlight) {
                            await self.execute(
                                request, verdict: verdict, payload: payload, ticket: ticket, window: window,
                                entry: entry, connection: connection, replies: replies)
                        }
                        window.finish(ticket)
                    }
                }
                do {
                    if try await !input.readMore() {
                        return connection.isStopping ? "stopped" : "client closed the connection"
                    }
                } catch {
                    return "read failed: \(error)"
                }
            }
        }
    }

    private static func isWrite(_ verdict: NBDVerdict) -> Bool {
        switch verdict {
        case .perform(.write), .perform(.trim), .perform(.writeZeroes): true
        default: false
        }
    }

    /// Runs one request against the export and sends its reply.
    private func execute(
        _ request: NBDRequest, verdict: NBDVerdict, payload: ByteBuffer?, ticket: RequestWindow.Ticket,
        window: RequestWindow, entry: ExportEntry, connection: NBDConnection, replies: ReplySender
    ) async {
        var reply = NBDSimpleReply(cookie: request.cookie)
        var data: ByteBuffer?
        let export = entry.export
        switch verdict {
        case .reject(let errno, let reason):
            reply.error = errno
            log(.debug, "refused \(request) with \(errno): \(reason)", connection: connection.id, export: entry.info.name)
        case .succeed:
            break
        case .perform(let command):
            do throws(NBDIOError) {
                switch command {
                case .read(let offset, let length):
                    let buffer = try await export.read(offset: offset, length: length, allocator: connection.channel.allocator)
                    guard buffer.readableBytes == length else {
                        throw .io("the export returned \(buffer.readableBytes) bytes for a read of \(length)")
                    }
                    data = buffer
                case .write(let offset, _, let fua):
                    try await export.write(offset: offset, data: payload ?? ByteBuffer(), fua: fua)
                case .flush:
                    await window.writesFinished(before: ticket)
                    try await export.flush()
                case .trim(let offset, let length, let fua):
                    try await export.trim(offset: offset, length: length, fua: fua)
                case .writeZeroes(let offset, let length, let fua, let mayTrim):
                    try await export.writeZeroes(offset: offset, length: length, fua: fua, mayTrim: mayTrim)
                case .disconnect:
                    return
                }
            } catch {
                reply.error = error.kind
                log(.error, "\(request) failed with \(error.kind): \(error.message)", connection: connection.id, export: entry.info.name)
            }
        }
        entry.record(request, failed: reply.error != nil)
        var head = connection.channel.allocator.buffer(capacity: NBDSimpleReply.headerSize)
        head.writeBytes(reply.encoded())
        await replies.send(OutboundFrame(head: head, payload: reply.error == nil ? data : nil))
    }
}

extension ExportEntry {
    func record(_ request: NBDRequest, failed: Bool) {
        statistics.withLock { stats in
            let bytes = failed ? 0 : UInt64(request.length)
            switch request.type {
            case .read:
                stats.reads += 1
                stats.bytesRead += bytes
            case .write:
                stats.writes += 1
                stats.bytesWritten += bytes
            case .flush: stats.flushes += 1
            case .trim: stats.trims += 1
            case .writeZeroes: stats.writeZeroes += 1
            default: break
            }
            if failed { stats.errors += 1 }
        }
    }
}
