#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import NIOCore
import NIOPosix
import NetSwitch
import NetSwitchControl
import Synchronization

/// One cevm network's switch process: the `Switch` value driven over real
/// sockets.
///
/// ```swift
/// let server = try NetSwitchServer.start(name: name, paths: NetPaths(root: home, name: name))
/// await server.waitUntilStopped()     // a `shutdown` request, or stop()
/// ```
///
/// Ports are socket pairs, not listening sockets: for `attach` the switch
/// makes a `socketpair(2)`, keeps one end as a SwiftNIO channel, hands the
/// other (QEMU's) to the requester with SCM_RIGHTS, and keeps a duplicate
/// of QEMU's end that it never reads while the instance lives: at
/// `promote` it drains that duplicate to learn what Old_VM's QEMU never
/// read, and the `Switch` resends those frames whole to New_VM. Because of
/// that duplicate, the switch's end never sees QEMU exit: a port lives
/// until `detach` (or until it is replaced by `promote`).
///
/// Threads: the `Switch` value, the channels and the duplicates belong to
/// one event loop (a group of one thread) and are touched only on it;
/// control requests come in on a thread per connection (blocking I/O) and
/// run their switch work on the loop with `submit(...).wait()`.
public final class NetSwitchServer: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var limits: Limits
        /// SO_SNDBUF of the switch's end of each port: bounds what QEMU can
        /// leave unread in its socket, which must stay within
        /// `limits.redeliveryWindowBytes` (Linux doubles the value).
        public var socketBufferBytes: Int
        /// Control connections served at once; more are closed on accept.
        public var maximumControlConnections: Int
        public var log: (@Sendable (String) -> Void)?

        public init(
            limits: Limits = Limits(), socketBufferBytes: Int = 256 << 10, maximumControlConnections: Int = 32,
            log: (@Sendable (String) -> Void)? = nil
        ) {
            self.limits = limits
            self.socketBufferBytes = socketBufferBytes
            self.maximumControlConnections = maximumControlConnections
            self.log = log
        }
    }

    public enum Error: Swift.Error, Sendable, CustomStringConvertible {
        case alreadyRunning(NetworkName, [pid_t])
        case request(String)

        public var description: String {
            switch self {
            case .alreadyRunning(let name, let pids):
                return "network '\(name)' already has a running switch" + (pids.isEmpty ? "" : " (pid \(pids.map(String.init).joined(separator: ", ")))")
            case .request(let message): return message
            }
        }
    }

    public let name: NetworkName
    public let paths: NetPaths
    public let configuration: Configuration

    private let group: MultiThreadedEventLoopGroup
    private let loop: any EventLoop
    private let lock: FileLock
    private let listener: Int32
    private let stopping = Atomic<Bool>(false)
    private let connections = Atomic<Int>(0)
    private let stopped = Latch<Bool>()

    // Owned by `loop`.
    private var sw: Switch
    private var channels: [PortID: any Channel] = [:]
    private var peers: [PortID: Int32] = [:]
    /// A duplicate of the switch's own end of each port, to ask how much
    /// QEMU sent that the switch has not read yet (FIONREAD).
    private var ownEnds: [PortID: Int32] = [:]
    /// During a group cut: when the first frame still held for each member
    /// was held, and the longest any member's hold lasted.
    private var holdStarted: [String: Double] = [:]
    private var longestHoldMs = 0.0

    private init(name: NetworkName, paths: NetPaths, configuration: Configuration, lock: FileLock, listener: Int32) {
        self.name = name
        self.paths = paths
        self.configuration = configuration
        self.lock = lock
        self.listener = listener
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.loop = group.next()
        self.sw = Switch(network: name.value, limits: configuration.limits)
    }

    /// Makes the network's directory (0700), takes its lock, listens on
    /// `control.sock` (0600 from the bind on) and serves until stopped.
    public static func start(name: NetworkName, paths: NetPaths, configuration: Configuration = Configuration()) throws -> NetSwitchServer {
        try Files.makeDirectory(paths.directory, mode: 0o700)
        guard let lock = try FileLock.tryAcquire(paths.lock) else {
            throw Error.alreadyRunning(name, FileLock.processesHolding(paths.lock))
        }
        let listener = try UnixSocket.listen(path: paths.controlSocket)
        try Files.writeAtomically(Array("\(getpid())\n".utf8), to: paths.pid)
        let server = NetSwitchServer(name: name, paths: paths, configuration: configuration, lock: lock, listener: listener)
        let thread = Thread { server.acceptLoop() }
        thread.name = "net-\(name.value)-control"
        thread.start()
        server.log("switch of network '\(name)' serving on \(paths.controlSocket) (pid \(getpid()))")
        return server
    }

    /// Stops accepting, closes every port and the control socket. Idempotent.
    public func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
    }

    /// Returns once the switch has stopped (ports closed, socket removed).
    public func waitUntilStopped() async {
        _ = await stopped.waitIgnoringCancellation()
    }

    private func log(_ message: String) {
        configuration.log?(message)
    }

    // MARK: Control connections

    private func acceptLoop() {
        while !stopping.load(ordering: .sequentiallyConsistent) {
            let accepted: Int32?
            do { accepted = try UnixSocket.accept(listener, timeoutMilliseconds: 100) } catch {
                log("accept failed: \(error)")
                usleep(100_000)
                continue
            }
            guard let fd = accepted else { continue }
            if connections.add(1, ordering: .sequentiallyConsistent).newValue > configuration.maximumControlConnections {
                connections.subtract(1, ordering: .sequentiallyConsistent)
                close(fd)
                continue
            }
            let thread = Thread { [self] in
                serve(connection: fd)
                connections.subtract(1, ordering: .sequentiallyConsistent)
            }
            thread.start()
        }
        close(listener)
        unlink(paths.controlSocket)
        let closing = loop.submit { [self] in
            let open = channels
            channels = [:]
            for (_, channel) in open { channel.close(promise: nil) }
            for (_, fd) in peers { close(fd) }
            peers = [:]
            for (_, fd) in ownEnds { close(fd) }
            ownEnds = [:]
        }
        _ = try? closing.wait()
        try? group.syncShutdownGracefully()
        Files.remove(paths.pid)
        log("stopped")
        _ = stopped.set(true)
    }

    private func serve(connection fd: Int32) {
        defer { close(fd) }
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        // A cut begun on this connection and not ended: aborted when the
        // connection closes (its coordinator is gone).
        var ownedCut: String?
        defer {
            if let group = ownedCut {
                let aborted = try? onLoop { server -> Bool in
                    server.perform(try server.sw.abortCut(group: group))
                    _ = server.resetHolds()
                    return true
                }
                if aborted == true {
                    log("group checkpoint \(group): its coordinator left; cut aborted, held frames released")
                }
            }
        }
        while !stopping.load(ordering: .sequentiallyConsistent) {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = Array(buffer[..<newline])
                buffer.removeFirst(newline + 1)
                let (reply, descriptor, stop) = answer(line, ownedCut: &ownedCut)
                do {
                    var bytes = Array((try JSONEncoder().encode(reply)))
                    bytes.append(0x0A)
                    try FDPassing.send(fd, bytes: bytes, descriptor: descriptor)
                } catch {
                    log("reply failed: \(error)")
                }
                if let descriptor { close(descriptor) }
                if stop { self.stop() }
                continue
            }
            if buffer.count > NetRequest.maximumLineBytes {
                let reply = NetResponse.failure("request longer than \(NetRequest.maximumLineBytes) bytes without a newline; closing")
                if var bytes = try? JSONEncoder().encode(reply) {
                    bytes.append(0x0A)
                    try? Files.writeAll(fd, bytes)
                }
                return
            }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { continue }
                return
            }
            buffer += chunk[0..<n]
        }
    }

    /// One request line → its reply, the descriptor to pass with it, and whether to stop.
    private func answer(_ line: [UInt8], ownedCut: inout String?) -> (NetResponse, Int32?, Bool) {
        let request: NetRequest
        do { request = try JSONDecoder().decode(NetRequest.self, from: Data(line)) } catch {
            let ops = NetRequest.Op.allCases.map(\.rawValue).joined(separator: ", ")
            log("refused a malformed request (\(line.count) bytes)")
            return (.failure("bad request: expected one JSON object per line with \"op\" one of \(ops) (\(Self.brief(error)))"), nil, false)
        }
        do {
            switch request.op {
            case .attach, .standby:
                let (port, fd) = try attach(request)
                return (NetResponse(ok: true, port: port.value), fd, false)
            case .detach:
                let port = try Self.port(request)
                try onLoop { server in
                    _ = try server.sw.leave(port)
                    server.channels.removeValue(forKey: port)?.close(promise: nil)
                    server.closeDescriptors(of: port)
                }
                log("detached \(port)")
                return (NetResponse(ok: true, port: port.value), nil, false)
            case .hold:
                let vm = try Self.vm(request)
                try onLoop { try $0.sw.hold(vm: vm) }
                log("holding frames for \(vm)")
                return (NetResponse(ok: true), nil, false)
            case .release:
                let vm = try Self.vm(request)
                try onLoop { $0.perform(try $0.sw.release(vm: vm)) }
                log("released \(vm)")
                return (NetResponse(ok: true), nil, false)
            case .promote:
                let vm = try Self.vm(request)
                let port = try Self.port(request)
                // Old_VM has stopped: what it sent before is read first (its
                // frames are pre-cut and must not die with its port).
                let unreadIn = waitUntilRead(vm: vm)
                if unreadIn > 0 { log("\(vm): \(unreadIn) byte(s) from its old instance still unread after 2 s; promoting anyway") }
                let redelivered = try onLoop { try $0.promote(vm: vm, newPort: port) }
                log("promoted \(port) for \(vm); \(redelivered) unread frame(s) redelivered")
                return (NetResponse(ok: true, port: port.value, redelivered: redelivered), nil, false)
            case .status:
                return (NetResponse(ok: true, status: try onLoop { $0.status() }), nil, false)
            case .shutdown:
                let attached = try onLoop { $0.sw.portList.map { "\($0.owner.vm) instance \($0.owner.instance)" } }
                if !attached.isEmpty && request.force != true {
                    throw Error.request("\(attached.count) port(s) attached (\(attached.joined(separator: ", "))); force to stop anyway")
                }
                log("shutdown requested")
                return (NetResponse(ok: true), nil, true)
            case .cutBegin:
                let group = try Self.group(request)
                let members = try (request.members ?? []).map { name -> String in
                    try NetworkName.check(name, kind: "VM")
                    return name
                }
                if members.isEmpty { throw Error.request("missing \"members\"") }
                try onLoop { server in
                    try server.sw.beginCut(group: group, members: Set(members))
                    _ = server.resetHolds()
                }
                ownedCut = group
                log("group checkpoint \(group): cutting for \(members.sorted().joined(separator: ", "))")
                return (NetResponse(ok: true), nil, false)
            case .cutInPlace:
                let vm = try Self.vm(request)
                let group = try Self.group(request)
                try cutInPlace(vm: vm, group: group)
                log("group checkpoint \(group): \(vm) cut in place")
                return (NetResponse(ok: true), nil, false)
            case .cutEnd:
                let group = try Self.group(request)
                guard let path = request.path, path.hasPrefix("/"), !path.split(separator: "/").contains("..") else {
                    throw Error.request("missing or bad \"path\": an absolute path without '..'")
                }
                let cut = try onLoop { server -> Cut in
                    guard let cut = server.sw.cut, cut.group == group else { throw SwitchError.noCut(group) }
                    if !cut.uncut.isEmpty { throw SwitchError.membersNotCut(cut.uncut) }
                    return cut
                }
                let state = ChannelState(frames: cut.channel.map { .init(from: $0.from, to: $0.to, bytes: $0.frame) })
                try Files.writeAtomically(state.encoded(), to: path)
                let longestHold = try onLoop { server -> Double in
                    _ = try server.sw.endCut(group: group)
                    return server.resetHolds()
                }
                ownedCut = nil
                let summary = CutSummary(
                    group: group, members: cut.members.sorted(), channelFrames: cut.channel.count,
                    channelBytes: cut.channel.reduce(0) { $0 + $1.frame.count }, framesHeld: cut.framesHeld, mostHeld: cut.mostHeld,
                    longestHoldMs: longestHold)
                log("group checkpoint \(group): cut ended; \(summary.channelFrames) channel frame(s), \(summary.framesHeld) held")
                var reply = NetResponse(ok: true)
                reply.cut = summary
                return (reply, nil, false)
            case .cutAbort:
                let group = try Self.group(request)
                try onLoop { server in
                    server.perform(try server.sw.abortCut(group: group))
                    _ = server.resetHolds()
                }
                ownedCut = nil
                log("group checkpoint \(group): cut aborted")
                return (NetResponse(ok: true), nil, false)
            case .inject:
                let vm = try Self.vm(request)
                guard let path = request.path else { throw Error.request("missing \"path\"") }
                let state = try ChannelState(decoding: try Files.read(path, limit: 256 << 20))
                let recordedAs = request.recordedAs ?? vm
                try NetworkName.check(recordedAs, kind: "VM")
                let frames = state.frames(to: recordedAs)
                try onLoop { $0.perform(try $0.sw.inject(frames, to: vm)) }
                log("injected \(frames.count) recorded frame(s) for \(vm)")
                var reply = NetResponse(ok: true)
                reply.injected = frames.count
                return (reply, nil, false)
            }
        } catch {
            return (.failure("\(request.op.rawValue): \(error)"), nil, false)
        }
    }

    private static func brief(_ error: any Swift.Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let context): return context.debugDescription
        case DecodingError.keyNotFound(let key, _): return "missing \"\(key.stringValue)\""
        case DecodingError.typeMismatch(_, let context): return "wrong type at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.valueNotFound(_, let context): return "null at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        default: return "\(error)"
        }
    }

    private static func vm(_ request: NetRequest) throws -> String {
        guard let vm = request.vm else { throw Error.request("missing \"vm\"") }
        try NetworkName.check(vm, kind: "VM")
        return vm
    }

    private static func group(_ request: NetRequest) throws -> String {
        guard let group = request.group else { throw Error.request("missing \"group\"") }
        try NetworkName.check(group, kind: "group")
        return group
    }

    private static func port(_ request: NetRequest) throws -> PortID {
        guard let port = request.port, port > 0 else { throw Error.request("missing or bad \"port\"") }
        return PortID(port)
    }

    /// Runs `body` on the switch's loop and waits for it.
    private func onLoop<T: Sendable>(_ body: @escaping @Sendable (NetSwitchServer) throws -> T) throws -> T {
        try loop.submit { [self] in try body(self) }.wait()
    }

    // MARK: Ports

    private func attach(_ request: NetRequest) throws -> (PortID, Int32) {
        let vm = try Self.vm(request)
        guard let instance = request.instance, instance >= 0 else { throw Error.request("missing or bad \"instance\"") }
        var parsedMAC: MACAddress?
        if let text = request.mac {
            guard let parsed = MACAddress(text) else { throw Error.request("bad \"mac\" '\(text)': expected six hex bytes like 52:54:00:12:34:56") }
            parsedMAC = parsed
        }
        let mac = parsedMAC
        let standby = request.op == .standby
        let (mine, qemu) = try FDPassing.socketPair()
        var size = Int32(configuration.socketBufferBytes)
        setsockopt(mine, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let peer: Int32
        let own: Int32
        do { peer = try FDPassing.duplicate(qemu) } catch {
            close(mine)
            close(qemu)
            throw error
        }
        do { own = try FDPassing.duplicate(mine) } catch {
            close(mine)
            close(qemu)
            close(peer)
            throw error
        }
        let port: PortID
        do {
            port = try onLoop { server in
                let port = standby
                    ? try server.sw.standby(vm: vm, instance: instance, mac: mac) : try server.sw.join(vm: vm, instance: instance, mac: mac)
                // Frames for it wait in its queue until its channel exists.
                _ = server.sw.handle(.writabilityChanged(port, false))
                return port
            }
        } catch {
            close(mine)
            close(qemu)
            close(peer)
            close(own)
            throw error
        }
        let maximum = configuration.limits.maximumFrameBytes
        let channel: any Channel
        do {
            channel = try ClientBootstrap(group: loop)
                .channelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandlers(
                            ByteToMessageHandler(StreamFrameDecoder(maximumFrameBytes: maximum)), PortHandler(server: self, port: port))
                    }
                }
                .withConnectedSocket(mine).wait()
        } catch {
            close(qemu)
            close(peer)
            close(own)
            _ = try? onLoop { try $0.sw.leave(port) }
            throw error
        }
        try onLoop { server in
            server.channels[port] = channel
            server.peers[port] = peer
            server.ownEnds[port] = own
            server.perform(server.sw.handle(.writabilityChanged(port, channel.isWritable)))
        }
        log("\(standby ? "standby" : "attached") \(port): \(vm) instance \(instance)\(mac.map { " mac \($0)" } ?? "")")
        return (port, qemu)
    }

    /// On the loop: closes Old_VM's port, drains what its QEMU never read,
    /// and lets the switch resend it, then the held frames, to `newPort`.
    private func promote(vm: String, newPort: PortID) throws -> Int {
        guard sw.standbyPort(of: vm) == newPort else { throw SwitchError.notStandby(vm, newPort) }
        var unread: [UInt8] = []
        let old = sw.activePort(of: vm)
        if let old {
            // Closing fails the writes still in the channel (never in the
            // socket, so never confirmed); nothing more enters the socket.
            channels.removeValue(forKey: old)?.close(promise: nil)
            if let fd = ownEnds.removeValue(forKey: old) { close(fd) }
            if let fd = peers.removeValue(forKey: old) {
                defer { close(fd) }
                unread = try FDPassing.drain(fd, limit: configuration.limits.redeliveryWindowBytes * 2)
            }
        }
        let before = sw.totals.redelivered
        perform(try sw.promote(vm: vm, newPort: newPort, unread: unread))
        endHold(of: vm)
        if let old { _ = try? sw.leave(old) }
        return sw.totals.redelivered - before
    }

    /// On the loop: carries out the switch's actions.
    func perform(_ actions: [Switch.Action]) {
        var touched: [PortID: any Channel] = [:]
        for action in actions {
            switch action {
            case .write(let port, let frame):
                guard let channel = channels[port] else { continue }
                var buffer = channel.allocator.buffer(capacity: Limits.lengthPrefixBytes + frame.count)
                buffer.writeInteger(UInt32(frame.count), endianness: .big)
                buffer.writeBytes(frame)
                let promise = loop.makePromise(of: Void.self)
                promise.futureResult.whenSuccess { [self] in perform(sw.handle(.wrote(port, frames: 1))) }
                channel.write(buffer, promise: promise)
                touched[port] = channel
            case .close(let port):
                channels.removeValue(forKey: port)?.close(promise: nil)
                closeDescriptors(of: port)
            }
        }
        for channel in touched.values { channel.flush() }
    }

    /// On the loop: a frame (or a refused one) from a port's channel.
    func received(_ input: PortInput, on port: PortID) {
        switch input {
        case .frame(let bytes):
            perform(sw.handle(.frameReceived(port, bytes)))
            if let cut = sw.cut, cut.heldFrames > 0 {
                for vm in cut.holding where holdStarted[vm] == nil { holdStarted[vm] = Timestamp.monotonic() }
            }
        case .refused(let length):
            log("\(port): refused a \(length)-byte frame (over \(configuration.limits.maximumFrameBytes))")
            perform(sw.handle(.frameRefused(port, length: length)))
        }
    }

    /// On the loop: a port's channel closed without `detach` or `promote`
    /// (a socket error): the port leaves, so nothing piles up for it.
    func channelClosed(_ port: PortID) {
        guard channels.removeValue(forKey: port) != nil else { return }
        closeDescriptors(of: port)
        _ = try? sw.leave(port)
        log("\(port) closed by an error; removed")
    }

    /// On the loop: the member has cut, so what was held for it is released.
    private func endHold(of vm: String) {
        if let start = holdStarted.removeValue(forKey: vm) { longestHoldMs = max(longestHoldMs, (Timestamp.monotonic() - start) * 1000) }
    }

    /// On the loop: the cut ended or was aborted; returns its longest hold.
    private func resetHolds() -> Double {
        defer {
            holdStarted = [:]
            longestHoldMs = 0
        }
        return longestHoldMs
    }

    /// On the loop: closes the duplicates kept of a port's two ends.
    private func closeDescriptors(of port: PortID) {
        if let fd = peers.removeValue(forKey: port) { close(fd) }
        if let fd = ownEnds.removeValue(forKey: port) { close(fd) }
    }

    /// Waits (at most two seconds) until the switch has read everything the
    /// VM's active instance sent; returns the bytes still unread.
    private func waitUntilRead(vm: String) -> Int {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(2)
        while true {
            let pending = (try? onLoop { server -> Int in
                guard let port = server.sw.activePort(of: vm), let own = server.ownEnds[port] else { return 0 }
                return Int((try? FDPassing.readableBytes(own)) ?? 0)
            }) ?? 0
            if pending == 0 || clock.now > deadline { return pending }
            usleep(1000)
        }
    }

    /// A paused member cuts in place. Everything it sent before pausing is
    /// pre-cut, so the switch first reads all of it (waits, at most two
    /// seconds, until its end of the socket has nothing unread); what the
    /// VM has not read is peeked, not taken: the same QEMU reads it later.
    private func cutInPlace(vm: String, group: String) throws {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(2)
        while true {
            let pending = try onLoop { server -> Int in
                guard let cut = server.sw.cut, cut.group == group else { throw SwitchError.noCut(group) }
                guard let port = server.sw.activePort(of: vm), let own = server.ownEnds[port], let peer = server.peers[port] else {
                    throw SwitchError.noActivePort(vm)
                }
                let pending = Int(try FDPassing.readableBytes(own))
                if pending > 0 { return pending }
                let unread = try FDPassing.peek(peer, limit: server.configuration.limits.redeliveryWindowBytes * 2)
                server.perform(try server.sw.cutInPlace(vm: vm, unread: unread))
                server.endHold(of: vm)
                return 0
            }
            if pending == 0 { return }
            if clock.now > deadline {
                throw Error.request("\(vm) still sends (\(pending) bytes unread by the switch after 2 s): a member cuts in place only while paused")
            }
            usleep(1000)
        }
    }

    func writabilityChanged(_ port: PortID, _ writable: Bool) {
        guard channels[port] != nil else { return }
        perform(sw.handle(.writabilityChanged(port, writable)))
    }

    private func status() -> NetStatus {
        let ports = sw.portList.map { p in
            var port = NetStatus.Port(
                port: p.id.value, vm: p.owner.vm, instance: p.owner.instance, mac: p.mac?.description, state: p.state.rawValue,
                held: sw.isHeld(p.owner.vm) && sw.activePort(of: p.owner.vm) == p.id,
                framesIn: p.counters.framesIn, bytesIn: p.counters.bytesIn, framesOut: p.counters.framesOut, bytesOut: p.counters.bytesOut,
                queuedFrames: p.queuedFrames, drops: Dictionary(uniqueKeysWithValues: p.counters.drops.map { ($0.key.rawValue, $0.value) }))
            port.framesHeld = p.counters.held
            port.framesRedelivered = p.counters.redelivered
            port.framesCarriedOver = p.counters.carriedOver
            return port
        }
        let t = sw.totals
        var status = NetStatus(
            network: name.value, pid: getpid(), ports: ports, framesReceived: t.framesReceived, forwarded: t.forwarded,
            drops: t.ingressDrops + t.copiesDropped,
            macTable: Dictionary(uniqueKeysWithValues: sw.macTable.map { ($0.key.description, $0.value.value) }))
        status.promotes = t.promotes
        status.framesHeld = t.held
        status.framesRedelivered = t.redelivered
        status.framesCarriedOver = t.carriedOver
        status.lostAtSwitchOver = t.lostAtSwitchOver
        if let cut = sw.cut {
            status.cut = NetStatus.CutProgress(
                group: cut.group, cut: cut.cut.sorted(), uncut: cut.uncut, heldFrames: cut.heldFrames, channelFrames: cut.channel.count)
        }
        return status
    }
}

/// A port's channel: frames in, writability changes; everything goes to the server on its loop.
final class PortHandler: ChannelInboundHandler {
    typealias InboundIn = PortInput

    let server: NetSwitchServer
    let port: PortID

    init(server: NetSwitchServer, port: PortID) {
        self.server = server
        self.port = port
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        server.received(unwrapInboundIn(data), on: port)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        server.writabilityChanged(port, context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        server.channelClosed(port)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
