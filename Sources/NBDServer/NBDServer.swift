import CEVMSystem
import NBDProtocol
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An NBD server (fixed newstyle handshake, simple replies) over SwiftNIO.
///
/// ```swift
/// let server = NBDServer(configuration: .init(log: { print($0) }))
/// try server.addExport(name: "disk", export: try FileExport(path: "disk.raw", writable: true))
/// try await server.listen(unixSocketPath: "/run/cevm/vm.nbd")   // 0600 from the bind on
/// // qemu-io -f raw nbd+unix:///disk?socket=/run/cevm/vm.nbd
/// await server.removeExport(name: "disk")   // closes its connections, waits for their requests
/// await server.shutdown()
/// ```
///
/// Exports can be added, replaced and removed while clients are connected;
/// a connection is bound to the export object it chose, and replacing or
/// removing that object ends the connection: it stops reading, answers
/// what it already read with `NBD_ESHUTDOWN`, lets the requests in flight
/// finish, then closes. `removeExport` and `replaceExport` return only once
/// no call into the old object is running or can start.
///
/// Each connection runs its requests concurrently, up to
/// `maximumRequestsInFlight` and `maximumBytesInFlight`; when full it stops
/// reading from the socket. Replies go out as requests complete, in any
/// order. A FLUSH waits for every write received before it, then calls the
/// export's `flush()`.
///
/// Threads: all socket I/O runs on `configuration.eventLoopGroup`; the
/// accept loop and each connection's tasks (its reader, one per request)
/// prefer the event loop that owns their socket (`EventLoopTaskExecutor`),
/// so a request crosses threads only into the export and back; export calls
/// must therefore not block. The server creates no threads. The class is `Sendable`;
/// its state sits behind one `Mutex`. Call `shutdown()` to stop listening
/// and close every connection.
public final class NBDServer: Sendable {
    public struct Configuration: Sendable {
        /// Advertised with `NBD_INFO_BLOCK_SIZE` and enforced on requests.
        public var blockSizes: NBDBlockSizes
        /// Requests one connection runs at once (QEMU keeps up to 16 in flight).
        public var maximumRequestsInFlight: Int
        /// Bytes of disk one connection's requests cover at once (READ and
        /// WRITE payloads, WRITE_ZEROES and TRIM lengths); a single larger
        /// request still runs, alone.
        public var maximumBytesInFlight: Int
        /// Connections at once; later ones are closed on accept.
        public var maximumConnections: Int
        /// A client that has not entered transmission by then is disconnected.
        public var handshakeTimeout: Duration
        /// How long a stopping connection may take to finish its requests and
        /// send their replies before it is closed hard.
        public var drainTimeout: Duration
        /// Oversized WRITE payloads up to this size are skipped and answered
        /// `NBD_EINVAL`; larger ones close the connection.
        public var maximumWriteDiscard: Int
        public var eventLoopGroup: any EventLoopGroup
        /// Receives every log record; nil discards them.
        public var log: (@Sendable (NBDLogRecord) -> Void)?

        public init(
            blockSizes: NBDBlockSizes = .standard, maximumRequestsInFlight: Int = 16,
            maximumBytesInFlight: Int = 64 << 20, maximumConnections: Int = 256,
            handshakeTimeout: Duration = .seconds(30), drainTimeout: Duration = .seconds(10),
            maximumWriteDiscard: Int = 64 << 20,
            eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
            log: (@Sendable (NBDLogRecord) -> Void)? = nil
        ) {
            self.blockSizes = blockSizes
            self.maximumRequestsInFlight = maximumRequestsInFlight
            self.maximumBytesInFlight = maximumBytesInFlight
            self.maximumConnections = maximumConnections
            self.handshakeTimeout = handshakeTimeout
            self.drainTimeout = drainTimeout
            self.maximumWriteDiscard = maximumWriteDiscard
            self.eventLoopGroup = eventLoopGroup
            self.log = log
        }
    }

    struct Listener: Sendable {
        let channel: any Channel
        let task: Task<Void, Never>
        /// The socket file and its inode, removed at shutdown if still ours.
        let socketFile: (path: String, inode: UInt64)?
    }

    struct State {
        var shuttingDown = false
        var catalog = NBDCatalog()
        var exports: [String: ExportEntry] = [:]
        var connections: [UInt64: NBDConnection] = [:]
        var listeners: [Listener] = []
        var nextConnectionID: UInt64 = 1
    }

    public let configuration: Configuration
    let state = Mutex(State())
    let shutdownComplete = Completion()

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    // MARK: Exports

    /// Adds an export. Fails if the name is taken, is not a valid NBD string
    /// (UTF-8, no NUL, at most 4096 bytes), or the server is shut down.
    public func addExport(name: String, description: String = "", export: any NBDExport) throws(NBDServerError) {
        if let problem = NBDExportInfo.problem(withName: name) {
            throw .invalidExportName(name: name, reason: problem)
        }
        let entry = ExportEntry(name: name, description: description, export: export)
        let failure: NBDServerError? = state.withLock { state in
            if state.shuttingDown { return .shutDown }
            if state.exports[name] != nil { return .exportExists(name: name) }
            state.exports[name] = entry
            state.catalog.insert(entry.info)
            return nil
        }
        if let failure { throw failure }
        log(.info, "added (\(entry.info.size) bytes, flags 0x\(String(entry.info.transmissionFlags.rawValue, radix: 16)))", export: name)
    }

    /// Replaces the export named `name` by `export`; the old one's
    /// connections end as with `removeExport`, new connections get the new one.
    public func replaceExport(name: String, description: String = "", export: any NBDExport) async throws(NBDServerError) {
        let entry = ExportEntry(name: name, description: description, export: export)
        let outcome: Result<[NBDConnection], NBDServerError> = state.withLock { state in
            if state.shuttingDown { return .failure(.shutDown) }
            guard let old = state.exports[name] else { return .failure(.noSuchExport(name: name)) }
            state.exports[name] = entry
            state.catalog.insert(entry.info)
            return .success(state.connections.values.filter { $0.entry === old })
        }
        let connections = try outcome.get()
        log(.info, "replaced; closing \(connections.count) connection(s) to the old export", export: name)
        await stop(connections)
    }

    /// Removes an export, ends its connections and waits until none of its
    /// calls is running. False when there was no such export.
    @discardableResult
    public func removeExport(name: String) async -> Bool {
        let connections: [NBDConnection]? = state.withLock { state in
            guard let entry = state.exports.removeValue(forKey: name) else { return nil }
            state.catalog.remove(name)
            return state.connections.values.filter { $0.entry === entry }
        }
        guard let connections else { return false }
        log(.info, "removed; closing \(connections.count) connection(s)", export: name)
        await stop(connections)
        return true
    }

    /// The names of the exports, sorted.
    public var exportNames: [String] { state.withLock { $0.catalog.sorted.map(\.name) } }

    /// The counters of an export, nil if there is none of that name.
    public func statistics(name: String) -> NBDExportStatistics? {
        let entry = state.withLock { $0.exports[name] }
        return entry?.statistics.withLock { $0 }
    }

    /// Connections open now (in the handshake or in transmission).
    public var connectionCount: Int { state.withLock { $0.connections.count } }

    // MARK: Listening

    /// Listens on a Unix socket at `path`, created with mode 0600 (the file
    /// never exists with a wider mode: `UnixSocket.bindPrivate`). A stale
    /// socket file (nobody accepting) is replaced; any other existing file
    /// is left alone and the call fails. May be called several times. The
    /// server listens on nothing else: cevm serves its VMs on Unix sockets
    /// only, so no TCP listener exists to be misused.
    public func listen(unixSocketPath path: String) async throws(NBDServerError) {
        if state.withLock({ $0.shuttingDown }) { throw .shutDown }
        try SocketPath.prepare(path)
        let fd: Int32
        do {
            fd = try UnixSocket.bindPrivate(path: path)
        } catch {
            throw .listenFailed(address: "unix:\(path)", reason: "\(error)")
        }
        var st = stat()
        let inode: UInt64? = lstat(path, &st) == 0 ? UInt64(st.st_ino) : nil
        let channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, OutboundFrame>, Never>
        do {
            // NIO takes the bound socket over and calls listen(2) on it
            // with its default backlog, 128.
            channel = try await ServerBootstrap(group: configuration.eventLoopGroup)
                .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 65536, maximum: 1 << 20))
                // Input may end before output: a stopping connection closes its input
                // and still sends the replies of requests in flight.
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .bind(fd) { child in
                    Self.initialize(child)
                }
        } catch {
            if let inode, lstat(path, &st) == 0, UInt64(st.st_ino) == inode { unlink(path) }
            throw .listenFailed(address: "unix:\(path)", reason: "\(error)")
        }
        try start(channel, address: "unix:\(path)", socketFile: inode.map { (path, $0) })
    }

    private static func initialize(_ channel: any Channel) -> EventLoopFuture<NIOAsyncChannel<ByteBuffer, OutboundFrame>> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(OutboundFrameEncoder())
            return try NIOAsyncChannel<ByteBuffer, OutboundFrame>(
                wrappingChannelSynchronously: channel,
                configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8)))
        }
    }

    private func start(
        _ channel: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, OutboundFrame>, Never>, address: String,
        socketFile: (path: String, inode: UInt64)?
    ) throws(NBDServerError) {
        // The accept loop runs on the listening socket's event loop too, so
        // accepting never waits for the global executor's threads (which the
        // host process may keep busy).
        let task = Task(executorPreference: EventLoopTaskExecutor(channel.channel.eventLoop)) {
            do {
                try await channel.executeThenClose { connections in
                    try await withThrowingDiscardingTaskGroup { group in
                        for try await connection in connections {
                            group.addTask { await self.serve(connection) }
                        }
                    }
                }
            } catch {
                self.log(.warning, "listener \(address) stopped: \(error)")
            }
        }
        let listener = Listener(channel: channel.channel, task: task, socketFile: socketFile)
        let accepted = state.withLock { state in
            if state.shuttingDown { return false }
            state.listeners.append(listener)
            return true
        }
        guard accepted else {
            channel.channel.close(promise: nil)
            throw .shutDown
        }
        log(.info, "listening on \(address)")
    }

    // MARK: Shutdown

    /// Stops listening, ends every connection (requests in flight finish and
    /// are answered, within `drainTimeout`), removes the socket files.
    /// Idempotent; a second caller waits for the first to finish.
    public func shutdown() async {
        let taken: (listeners: [Listener], connections: [NBDConnection])? = state.withLock { state in
            if state.shuttingDown { return nil }
            state.shuttingDown = true
            return (state.listeners, Array(state.connections.values))
        }
        guard let (listeners, connections) = taken else {
            await shutdownComplete.wait()
            return
        }
        for listener in listeners { listener.channel.close(promise: nil) }
        await stop(connections)
        for listener in listeners { await listener.task.value }
        for case let (path, inode)? in listeners.map(\.socketFile) {
            var st = stat()
            if lstat(path, &st) == 0, UInt64(st.st_ino) == inode { unlink(path) }
        }
        log(.info, "shut down")
        shutdownComplete.fire()
    }

    /// Ends `connections` gracefully, then hard after `drainTimeout`, and
    /// waits until each has finished.
    func stop(_ connections: [NBDConnection]) async {
        for connection in connections { connection.requestStop() }
        await withDiscardingTaskGroup { group in
            for connection in connections {
                group.addTask {
                    if await connection.finished.wait(timeout: self.configuration.drainTimeout) { return }
                    self.log(.warning, "requests did not drain within \(self.configuration.drainTimeout); closing", connection: connection.id)
                    connection.channel.close(promise: nil)
                    await connection.finished.wait()
                }
            }
        }
    }

    // MARK: Logging

    func log(_ level: NBDLogRecord.Level, _ message: @autoclosure () -> String, connection: UInt64? = nil, export: String? = nil) {
        guard let handler = configuration.log else { return }
        handler(NBDLogRecord(level: level, connection: connection, export: export, message: message()))
    }
}

/// One registered export: the object, what is advertised, its counters.
final class ExportEntry: Sendable {
    let info: NBDExportInfo
    let export: any NBDExport
    let statistics = Mutex(NBDExportStatistics())

    init(name: String, description: String, export: any NBDExport) {
        self.info = NBDExportInfo(name: name, description: description, size: export.size, capabilities: export.capabilities)
        self.export = export
    }
}

/// Checks and clears the path of a Unix socket before binding it.
enum SocketPath {
    static func prepare(_ path: String) throws(NBDServerError) {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw .listenFailed(address: "unix:\(path)", reason: String(cString: strerror(errno)))
        }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw .notASocket(path: path) }
        // A live server accepts the connection; a stale socket file refuses it.
        do {
            let fd = try UnixSocket.connect(path: path)
            close(fd)
            throw NBDServerError.socketInUse(path: path)
        } catch let error as SystemError where error.errno == ECONNREFUSED {
            unlink(path)
        } catch let error as NBDServerError {
            throw error
        } catch {
            throw .listenFailed(address: "unix:\(path)", reason: "\(error)")
        }
    }
}
