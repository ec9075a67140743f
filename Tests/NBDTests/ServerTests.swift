import CEVMSystem
import Foundation
import NBDProtocol
import NBDServer
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// The server over a real Unix socket, driven byte for byte by `RawClient`.
@Suite struct ServerTests {
    static let size = 1 << 20

    @Test func goWriteReadFlushDisconnect() async throws {
        let export = MemoryExport(size: Self.size)
        let s = try await TestServer.start([("disk", export)])
        let client = try await RawClient.connect(s.socket)
        let greeting = try await client.greet()
        #expect(greeting.flags == [.fixedNewstyle, .noZeroes])
        let replies = try await client.option(.go(NBDInfoRequest(name: "disk", items: [.blockSize])))
        #expect(replies.map(\.type) == [.info, .info, .ack])

        let data = pattern(4096, seed: 1)
        let write = try await client.roundTrip(NBDRequest(type: .write, cookie: 1, offset: 8192, length: 4096), payload: data)
        #expect(write.reply == NBDSimpleReply(cookie: 1))
        let read = try await client.roundTrip(NBDRequest(type: .read, cookie: 2, offset: 8192, length: 4096))
        #expect(read.reply == NBDSimpleReply(cookie: 2))
        #expect(read.data == data)
        let flush = try await client.roundTrip(NBDRequest(type: .flush, cookie: 3))
        #expect(flush.reply.error == nil)
        try await client.request(NBDRequest(type: .disconnect, cookie: 4))
        #expect(await client.closedByServer())
        #expect(client.pending == 0)
        #expect(Array(export.content[8192..<12288]) == data)
        #expect(await eventually { s.server.statistics(name: "disk")?.openConnections == 0 })
        let stats = try #require(s.server.statistics(name: "disk"))
        #expect(stats.reads == 1 && stats.writes == 1 && stats.flushes == 1)
        #expect(stats.bytesRead == 4096 && stats.bytesWritten == 4096 && stats.errors == 0)
        await s.server.shutdown()
    }

    @Test func unknownOptionThenGoOverTheSocket() async throws {
        let s = try await TestServer.start([("disk", MemoryExport(size: 4096))])
        let client = try await RawClient.connect(s.socket)
        try await client.greet()
        let unknown = try await client.option(.other(NBDOptionCode(rawValue: 0x1234), data: [1, 2, 3, 4]))
        #expect(unknown.map(\.type) == [.errUnsupported])
        let structured = try await client.option(.structuredReply)
        #expect(structured.map(\.type) == [.errUnsupported])
        let missing = try await client.option(.go(NBDInfoRequest(name: "nope")))
        #expect(missing.map(\.type) == [.errUnknown])
        let go = try await client.option(.go(NBDInfoRequest(name: "disk")))
        #expect(go.last?.type == .ack)
        let read = try await client.roundTrip(NBDRequest(type: .read, cookie: 9, length: 16))
        #expect(read.reply.error == nil && read.data.count == 16)
        await client.close()
        await s.server.shutdown()
    }

    @Test func badRequestMagicClosesThatConnectionOnly() async throws {
        let s = try await TestServer.start([("disk", MemoryExport(size: 4096))])
        let hostile = try await RawClient.connect(s.socket)
        _ = try await hostile.go("disk")
        try await hostile.send([UInt8](repeating: 0x41, count: 28))
        #expect(await hostile.closedByServer())
        #expect(await eventually { s.log.contains(.warning, "bad request magic 0x41414141 at byte 0x") })

        let good = try await RawClient.connect(s.socket)
        _ = try await good.go("disk")
        #expect(try await good.roundTrip(NBDRequest(type: .read, cookie: 1, length: 8)).reply.error == nil)
        await good.close()
        await s.server.shutdown()
    }

    @Test func refusedRequestsKeepTheConnectionUsable() async throws {
        let s = try await TestServer.start([("disk", MemoryExport(size: 65536)), ("ro", MemoryExport(size: 65536, capabilities: [.readOnly]))])
        let client = try await RawClient.connect(s.socket)
        _ = try await client.go("disk")
        // Read longer than the maximum payload.
        let long = try await client.roundTrip(NBDRequest(type: .read, cookie: 1, length: (32 << 20) + 1))
        #expect(long.reply == NBDSimpleReply(cookie: 1, error: .invalid))
        // Past the end, and offset + length overflowing 64 bits.
        #expect(try await client.roundTrip(NBDRequest(type: .read, cookie: 2, offset: 65536, length: 1)).reply.error == .invalid)
        #expect(try await client.roundTrip(NBDRequest(type: .read, cookie: 3, offset: .max, length: 2)).reply.error == .invalid)
        #expect(
            try await client.roundTrip(NBDRequest(type: .write, cookie: 4, offset: 65535, length: 2), payload: [1, 2]).reply.error
                == .noSpace)
        // An unknown command.
        #expect(try await client.roundTrip(NBDRequest(type: NBDCommandType(rawValue: 77), cookie: 5)).reply.error == .invalid)
        // Still in step.
        let read = try await client.roundTrip(NBDRequest(type: .read, cookie: 6, length: 4))
        #expect(read.reply == NBDSimpleReply(cookie: 6) && read.data == [0, 0, 0, 0])
        await client.close()

        let readOnly = try await RawClient.connect(s.socket)
        let (_, flags) = try await readOnly.go("ro")
        #expect(flags.contains(.readOnly))
        #expect(try await readOnly.roundTrip(NBDRequest(type: .write, cookie: 1, length: 3), payload: [7, 7, 7]).reply.error == .notPermitted)
        #expect(try await readOnly.roundTrip(NBDRequest(type: .read, cookie: 2, length: 3)).data == [0, 0, 0])
        await readOnly.close()
        #expect(s.server.statistics(name: "disk")?.errors == 5)
        await s.server.shutdown()
    }

    /// A WRITE over the maximum payload: its data is skipped, it is refused
    /// with EINVAL, and the request after it is served.
    @Test func anOversizedWriteIsSkippedAndRefused() async throws {
        let sizes = try #require(NBDBlockSizes(minimum: 1, preferred: 4096, maximum: 65536))
        let export = MemoryExport(size: 1 << 20)
        let s = try await TestServer.start([("disk", export)]) { $0.blockSizes = sizes }
        let client = try await RawClient.connect(s.socket)
        _ = try await client.go("disk")
        let payload = [UInt8](repeating: 0xff, count: 100_000)
        try await client.request(NBDRequest(type: .write, cookie: 1, length: 100_000), payload: payload)
        #expect(try await client.reply().reply == NBDSimpleReply(cookie: 1, error: .invalid))
        #expect(try await client.roundTrip(NBDRequest(type: .read, cookie: 2, length: 4)).data == [0, 0, 0, 0])
        #expect(export.content.allSatisfy { $0 == 0 })
        // Beyond the skip limit the connection is closed.
        try await client.request(NBDRequest(type: .write, cookie: 3, length: 200 << 20))
        #expect(await client.closedByServer())
        await s.server.shutdown()
    }

    /// Replies go out as requests finish, not in request order.
    @Test func repliesMayCompleteOutOfOrder() async throws {
        let slow = Latch()
        let export = MemoryExport(size: 65536) { _, offset in
            if offset == 0 { await slow.wait() }
        }
        let s = try await TestServer.start([("disk", export)])
        let client = try await RawClient.connect(s.socket)
        _ = try await client.go("disk")
        try await client.request(NBDRequest(type: .read, cookie: 1, offset: 0, length: 8))
        try await client.request(NBDRequest(type: .read, cookie: 2, offset: 4096, length: 8))
        let first = try await client.reply(dataLength: 8)
        #expect(first.reply.cookie == 2)
        slow.open()
        let second = try await client.reply(dataLength: 8)
        #expect(second.reply.cookie == 1)
        await client.close()
        await s.server.shutdown()
    }

    /// At most `maximumRequestsInFlight` requests reach the export at once;
    /// the rest wait unread in the socket.
    @Test func requestsInFlightAreBounded() async throws {
        let gate = Latch()
        let export = MemoryExport(size: 1 << 20) { _, _ in await gate.wait() }
        let s = try await TestServer.start([("disk", export)]) { $0.maximumRequestsInFlight = 4 }
        let client = try await RawClient.connect(s.socket)
        _ = try await client.go("disk")
        for cookie in 0..<40 {
            try await client.request(NBDRequest(type: .read, cookie: UInt64(cookie), offset: UInt64(cookie) * 512, length: 512))
        }
        #expect(await eventually { gate.waiting == 4 })
        try await Task.sleep(for: .milliseconds(50))
        #expect(gate.waiting == 4)
        gate.open()
        var cookies: Set<UInt64> = []
        for _ in 0..<40 { cookies.insert(try await client.reply(dataLength: 512).reply.cookie) }
        #expect(cookies == Set(0..<40))
        #expect(export.maximumConcurrency == 4)
        await client.close()
        await s.server.shutdown()
    }

    /// A FLUSH is answered only after the writes received before it are done.
    @Test func flushWaitsForEarlierWrites() async throws {
        let slowWrite = Latch()
        let export = MemoryExport(size: 65536) { name, _ in
            if name == "write" { await slowWrite.wait() }
        }
        let s = try await TestServer.start([("disk", export)])
        let client = try await RawClient.connect(s.socket)
        _ = try await client.go("disk")
        try await client.request(NBDRequest(type: .write, cookie: 1, length: 4), payload: [1, 2, 3, 4])
        try await client.request(NBDRequest(type: .flush, cookie: 2))
        try await client.request(NBDRequest(type: .read, cookie: 3, offset: 100, length: 4))
        // The read overtakes both; the flush is held behind the write.
        #expect(try await client.reply(dataLength: 4).reply.cookie == 3)
        try await Task.sleep(for: .milliseconds(50))
        #expect(client.pending == 0)
        #expect(!export.events.contains("flush"))
        slowWrite.open()
        let a = try await client.reply()
        let b = try await client.reply()
        #expect(Set([a.reply.cookie, b.reply.cookie]) == [1, 2])
        #expect(export.events == ["read@100", "write@0", "flush"])
        await client.close()
        await s.server.shutdown()
    }

    @Test func severalConnectionsAtOnce() async throws {
        let export = MemoryExport(size: 1 << 20)
        let s = try await TestServer.start([("disk", export)])
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<6 {
                group.addTask {
                    let client = try await RawClient.connect(s.socket)
                    _ = try await client.go("disk")
                    let data = pattern(8192, seed: UInt8(i))
                    let offset = UInt64(i) * 65536
                    for round in 0..<10 {
                        let cookie = UInt64(round * 2)
                        _ = try await client.roundTrip(NBDRequest(type: .write, cookie: cookie, offset: offset, length: 8192), payload: data)
                        let read = try await client.roundTrip(NBDRequest(type: .read, cookie: cookie + 1, offset: offset, length: 8192))
                        guard read.data == data else { throw TestFailure("connection \(i) read back other bytes") }
                    }
                    try await client.request(NBDRequest(type: .disconnect, cookie: 99))
                    _ = await client.closedByServer()
                }
            }
            try await group.waitForAll()
        }
        let stats = try #require(s.server.statistics(name: "disk"))
        #expect(stats.totalConnections == 6 && stats.writes == 60 && stats.reads == 60)
        await s.server.shutdown()
    }

    @Test func removingAnExportClosesItsConnections() async throws {
        let s = try await TestServer.start([("a", MemoryExport(size: 4096)), ("b", MemoryExport(size: 4096))])
        let onA = try await RawClient.connect(s.socket)
        _ = try await onA.go("a")
        let onB = try await RawClient.connect(s.socket)
        _ = try await onB.go("b")
        let waiting = try await RawClient.connect(s.socket)
        try await waiting.greet()

        #expect(await s.server.removeExport(name: "a"))
        #expect(await onA.closedByServer(timeout: .seconds(2)))
        #expect(s.server.exportNames == ["b"])
        #expect(s.server.statistics(name: "a") == nil)
        // Other connections are untouched; the removed name is now unknown.
        #expect(try await onB.roundTrip(NBDRequest(type: .read, cookie: 1, length: 4)).reply.error == nil)
        #expect(try await waiting.option(.go(NBDInfoRequest(name: "a"))).map(\.type) == [.errUnknown])
        #expect(await s.server.removeExport(name: "a") == false)
        await onB.close()
        await waiting.close()
        await s.server.shutdown()
    }

    /// removeExport returns only once the requests in flight on the removed
    /// export have finished (and their replies were sent).
    @Test func removeExportWaitsForRequestsInFlight() async throws {
        let gate = Latch()
        let export = MemoryExport(size: 65536) { name, _ in
            if name == "write" { await gate.wait() }
        }
        let s = try await TestServer.start([("disk", export)])
        let client = try await RawClient.connect(s.socket)
        _ = try await client.go("disk")
        try await client.request(NBDRequest(type: .write, cookie: 1, length: 2), payload: [5, 5])
        #expect(await eventually { gate.waiting == 1 })
        let removal = Task { await s.server.removeExport(name: "disk") }
        try await Task.sleep(for: .milliseconds(50))
        // A request sent now is read from the buffer only if it got there
        // before the stop; either way nothing more reaches the export.
        gate.open()
        #expect(await removal.value)
        #expect(try await client.reply().reply == NBDSimpleReply(cookie: 1))
        #expect(await client.closedByServer())
        #expect(export.content.prefix(2) == [5, 5])
        await s.server.shutdown()
    }

    /// Requests already read when the export goes away are answered
    /// NBD_ESHUTDOWN (proto.md: the client must then disconnect).
    @Test func requestsReadAfterTheStopAreAnsweredShutdown() async throws {
        let gate = Latch()
        let export = MemoryExport(size: 65536) { name, _ in
            if name == "write" { await gate.wait() }
        }
        let s = try await TestServer.start([("disk", export)]) { $0.maximumRequestsInFlight = 1 }
        let client = try await RawClient.connect(s.socket)
        _ = try await client.go("disk")
        try await client.send(
            NBDRequest(type: .write, cookie: 1, length: 1).encodedHeader() + [9]
                + NBDRequest(type: .read, cookie: 2, length: 1).encodedHeader()
                + NBDRequest(type: .read, cookie: 3, length: 1).encodedHeader())
        #expect(await eventually { gate.waiting == 1 })
        let removal = Task { await s.server.removeExport(name: "disk") }
        #expect(await eventually { s.log.contains(.info, "closing 1 connection") })
        gate.open()
        #expect(await removal.value)
        var replies: [UInt64: NBDErrno?] = [:]
        for _ in 0..<3 {
            let reply = try await client.reply()
            replies[reply.reply.cookie] = reply.reply.error
        }
        #expect(replies == [1: nil, 2: .shutdown, 3: .shutdown])
        #expect(export.events == ["write@0"])
        #expect(await client.closedByServer())
        await s.server.shutdown()
    }

    /// A client that stops reading cannot hold a removal up for longer than
    /// the drain timeout.
    @Test func aClientThatDoesNotReadIsClosedAfterTheDrainTimeout() async throws {
        let export = MemoryExport(size: 16 << 20)
        let s = try await TestServer.start([("disk", export)]) { $0.drainTimeout = .milliseconds(300) }
        let client = try await RawClient.connect(s.socket)
        _ = try await client.go("disk")
        try await client.channel.setOption(ChannelOptions.autoRead, value: false).get()
        // 16 MiB of replies the client does not read fill the socket.
        for cookie in 0..<16 {
            try await client.request(NBDRequest(type: .read, cookie: UInt64(cookie), offset: UInt64(cookie) << 20, length: 1 << 20))
        }
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        #expect(await s.server.removeExport(name: "disk"))
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(s.log.contains(.warning, "did not drain"))
        await client.close()
        await s.server.shutdown()
    }

    @Test func replacingAnExportSwapsItForNewConnections() async throws {
        let old = MemoryExport(size: 4096, content: [UInt8](repeating: 1, count: 4096))
        let new = MemoryExport(size: 8192, content: [UInt8](repeating: 2, count: 8192))
        let s = try await TestServer.start([("disk", old)])
        let before = try await RawClient.connect(s.socket)
        #expect(try await before.go("disk").size == 4096)
        try await s.server.replaceExport(name: "disk", export: new)
        #expect(await before.closedByServer())
        let after = try await RawClient.connect(s.socket)
        #expect(try await after.go("disk").size == 8192)
        #expect(try await after.roundTrip(NBDRequest(type: .read, cookie: 1, length: 2)).data == [2, 2])
        await after.close()
        await #expect(throws: NBDServerError.noSuchExport(name: "other")) {
            try await s.server.replaceExport(name: "other", export: new)
        }
        #expect(throws: NBDServerError.exportExists(name: "disk")) { try s.server.addExport(name: "disk", export: new) }
        await s.server.shutdown()
    }

    @Test func shutdownClosesConnectionsAndRemovesTheSocket() async throws {
        let s = try await TestServer.start([("disk", MemoryExport(size: 4096))])
        let inTransmission = try await RawClient.connect(s.socket)
        _ = try await inTransmission.go("disk")
        let inHandshake = try await RawClient.connect(s.socket)
        try await inHandshake.greet()
        #expect(await eventually { s.server.connectionCount == 2 })
        await s.server.shutdown()
        #expect(await inTransmission.closedByServer())
        #expect(await inHandshake.closedByServer())
        #expect(!Files.exists(s.socket))
        #expect(s.server.connectionCount == 0)
        await s.server.shutdown()
        await #expect(throws: NBDServerError.shutDown) { try await s.server.listen(unixSocketPath: s.socket) }
        #expect(throws: NBDServerError.shutDown) { try s.server.addExport(name: "x", export: MemoryExport(size: 1)) }
    }

    @Test func theSocketIsPrivateAndNeverClobbersOtherFiles() async throws {
        let s = try await TestServer.start()
        var st = stat()
        #expect(lstat(s.socket, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect((st.st_mode & S_IFMT) == S_IFSOCK)
        // A live socket is not taken over.
        let other = NBDServer()
        await #expect(throws: NBDServerError.socketInUse(path: s.socket)) { try await other.listen(unixSocketPath: s.socket) }
        // A regular file is left alone.
        let file = s.scratch.file("precious")
        try writeFile(file, [1, 2, 3])
        await #expect(throws: NBDServerError.notASocket(path: file)) { try await other.listen(unixSocketPath: file) }
        #expect(try readFile(file) == [1, 2, 3])
        // A stale socket file (its server gone) is replaced.
        let stale = s.scratch.file("stale.sock")
        let fd = try UnixSocket.listen(path: stale)
        close(fd)
        try await other.listen(unixSocketPath: stale)
        let client = try await RawClient.connect(stale)
        try await client.greet()
        await client.close()
        await other.shutdown()
        await s.server.shutdown()
    }

    @Test func aSilentClientIsDroppedAfterTheHandshakeTimeout() async throws {
        let s = try await TestServer.start([("disk", MemoryExport(size: 4096))]) { $0.handshakeTimeout = .milliseconds(200) }
        let client = try await RawClient.connect(s.socket)
        _ = try await client.receive(NBD.greetingSize)
        #expect(await client.closedByServer(timeout: .seconds(3)))
        #expect(s.log.contains(.warning, "handshake not finished"))
        await s.server.shutdown()
    }

    @Test func exportErrorsReachTheClientAndTheLog() async throws {
        struct Failing: NBDExport {
            var size: UInt64 { 4096 }
            var capabilities: NBDExportCapabilities { .writable }
            func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator) async throws(NBDIOError) -> ByteBuffer {
                if offset == 0 { throw .io("disk on fire") }
                return ByteBuffer(bytes: [1])  // one byte, whatever was asked
            }
            func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(NBDIOError) { throw .noSpace("full") }
        }
        let s = try await TestServer.start([("f", Failing())])
        let client = try await RawClient.connect(s.socket)
        _ = try await client.go("f")
        #expect(try await client.roundTrip(NBDRequest(type: .read, cookie: 1, length: 8)).reply.error == .io)
        #expect(try await client.roundTrip(NBDRequest(type: .read, cookie: 2, offset: 8, length: 8)).reply.error == .io)
        #expect(try await client.roundTrip(NBDRequest(type: .write, cookie: 3, length: 1), payload: [0]).reply.error == .noSpace)
        #expect(try await client.roundTrip(NBDRequest(type: .flush, cookie: 4)).reply.error == .notSupported)
        #expect(s.log.contains(.error, "disk on fire"))
        #expect(s.log.contains(.error, "returned 1 bytes for a read of 8"))
        await client.close()
        await s.server.shutdown()
    }

    @Test func invalidExportNamesAreRefused() throws {
        let server = NBDServer()
        #expect(throws: NBDServerError.self) { try server.addExport(name: "a\u{0}", export: MemoryExport(size: 1)) }
        #expect(throws: NBDServerError.self) {
            try server.addExport(name: String(repeating: "n", count: 5000), export: MemoryExport(size: 1))
        }
        try server.addExport(name: "", export: MemoryExport(size: 1))
        #expect(server.exportNames == [""])
    }

    /// Every socket cevm listens on is born 0600, whatever the umask: the
    /// NBD server's and `UnixSocket.listen`'s. The control shows what the
    /// umask alone gives a socket bound without care (0755), so a bind that
    /// relied on a later chmod, or on the umask, fails here.
    @Test func socketsAreCreated0600UnderUmask022() async throws {
        let scratch = try Scratch()
        let previous = umask(0o022)
        defer { umask(previous) }

        let control = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(unixDomainSocketPath: scratch.file("control.sock")).get()
        #expect(Self.mode(scratch.file("control.sock")) == 0o755)
        try await control.close()

        let server = NBDServer()
        try server.addExport(name: "disk", export: MemoryExport(size: 4096))
        try await server.listen(unixSocketPath: scratch.file("nbd.sock"))
        #expect(Self.mode(scratch.file("nbd.sock")) == 0o600)
        let client = try await RawClient.connect(scratch.file("nbd.sock"))
        _ = try await client.go("disk")
        await client.close()
        await server.shutdown()

        let fd = try UnixSocket.listen(path: scratch.file("pump.sock"))
        #expect(Self.mode(scratch.file("pump.sock")) == 0o600)
        close(fd)
    }

    static func mode(_ path: String) -> mode_t? {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return nil }
        return st.st_mode & 0o777
    }
}
