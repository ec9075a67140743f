import CEVMSystem
import Foundation
import NBDProtocol
import NIOCore
import NIOPosix
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import NBDServer

/// A connection's tasks run on the event loop that owns its socket
/// (`EventLoopTaskExecutor`), so a request crosses threads only into the
/// export's own I/O thread and back.
@Suite struct ExecutorTests {
    /// A task preferring the executor runs on the loop, comes back to it
    /// after a continuation another thread resumed, and its child tasks do too.
    @Test func tasksPreferringTheExecutorRunOnItsLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let seen = await withTaskExecutorPreference(EventLoopTaskExecutor(loop)) {
            var seen = [loop.inEventLoop]
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                Thread { continuation.resume() }.start()
            }
            seen.append(loop.inEventLoop)
            let children = await withTaskGroup(of: Bool.self) { children in
                for _ in 0..<4 { children.addTask { loop.inEventLoop } }
                return await children.reduce(into: [Bool]()) { $0.append($1) }
            }
            return seen + children
        }
        #expect(seen == [Bool](repeating: true, count: 6))
        #expect(!loop.inEventLoop)
        try await group.shutdownGracefully()
    }

    /// The export is called from the connection's event loop (one of the
    /// server's group), for every kind of request, and the replies are right.
    @Test func exportCallsRunOnTheConnectionsEventLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loops = Mutex<[ObjectIdentifier?]>([])
        let export = MemoryExport(size: 1 << 20) { _, _ in
            let current = MultiThreadedEventLoopGroup.currentEventLoop.map { ObjectIdentifier($0 as AnyObject) }
            loops.withLock { $0.append(current) }
        }
        let s = try await TestServer.start([("disk", export)]) { $0.eventLoopGroup = group }
        let client = try await RawClient.connect(s.socket)
        try await client.greet()
        _ = try await client.option(.go(NBDInfoRequest(name: "disk", items: [])))
        let data = pattern(4096, seed: 7)
        #expect(try await client.roundTrip(NBDRequest(type: .write, cookie: 1, offset: 0, length: 4096), payload: data).reply.error == nil)
        let read = try await client.roundTrip(NBDRequest(type: .read, cookie: 2, offset: 0, length: 4096))
        #expect(read.data == data)
        #expect(try await client.roundTrip(NBDRequest(type: .flush, cookie: 3)).reply.error == nil)
        #expect(try await client.roundTrip(NBDRequest(type: .writeZeroes, cookie: 4, offset: 0, length: 512)).reply.error == nil)
        try await client.request(NBDRequest(type: .disconnect, cookie: 5))
        #expect(await client.closedByServer())
        await s.server.shutdown()

        let seen = loops.withLock { $0 }
        let members = Set(group.makeIterator().map { ObjectIdentifier($0 as AnyObject) })
        #expect(seen.count == 4)
        #expect(seen.allSatisfy { $0.map(members.contains) ?? false }, "every call on one of the server's loops")
        #expect(Set(seen).count == 1, "all on the connection's own loop")
        try await group.shutdownGracefully()
    }
}

/// `NBDRequestContext.requestsInFlight` tells the export how many of its
/// connection's requests were in flight when the call started: 1 for a
/// client that waits for each reply (depth 1), more for one that pipelines.
@Suite struct RequestContextTests {
    @Test func theExportSeesItsConnectionsRequestsInFlight() async throws {
        let seen = Mutex<[Int]>([])
        let export = MemoryExport(size: 1 << 20) { _, _ in
            seen.withLock { $0.append(NBDRequestContext.requestsInFlight) }
        }
        let s = try await TestServer.start([("disk", export)])
        let client = try await RawClient.connect(s.socket)
        try await client.greet()
        _ = try await client.option(.go(NBDInfoRequest(name: "disk", items: [])))
        for cookie in UInt64(1)...3 {
            #expect(try await client.roundTrip(NBDRequest(type: .read, cookie: cookie, offset: 0, length: 4096)).reply.error == nil)
        }
        #expect(seen.withLock { $0 } == [1, 1, 1], "one at a time: each alone")
        // Eight reads in one send: the server reads them together, admits
        // them all, then runs them.
        let batch = (UInt64(10)..<18).flatMap { NBDRequest(type: .read, cookie: $0, offset: 0, length: 4096).encodedHeader() }
        try await client.send(batch)
        for _ in 0..<8 { #expect(try await client.reply(dataLength: 4096).reply.error == nil) }
        let pipelined = seen.withLock { Array($0.dropFirst(3)) }
        #expect(pipelined.count == 8)
        #expect((pipelined.max() ?? 0) > 1, "pipelined requests are not alone: \(pipelined)")
        #expect(NBDRequestContext.requestsInFlight == 0, "nothing outside a request")
        try await client.request(NBDRequest(type: .disconnect, cookie: 99))
        #expect(await client.closedByServer())
        await s.server.shutdown()
    }
}

/// Replies are written from the event loop and flushed once per turn of
/// it (`ReplySender`); a client that sends requests and reads no reply
/// must still stop being read once the window is full.
@Suite struct ReplyBackpressureTests {
    /// A blocking Unix-socket client that reads only when told to.
    struct BlockingClient {
        let fd: Int32

        func write(_ bytes: [UInt8]) throws {
            try Files.writeAll(fd, bytes, subject: "test socket")
        }

        func read(_ count: Int) throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let n = out.withUnsafeMutableBytes { raw in Glibc.read(fd, raw.baseAddress! + done, count - done) }
                if n <= 0 { throw TestFailure("socket read returned \(n) after \(done) of \(count) bytes") }
                done += n
            }
            return out
        }
    }

    @Test func aClientThatReadsNoReplyIsNoLongerRead() async throws {
        let size = 8 << 20, length = 1 << 20, requests = 64
        let content = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 13) }
        let export = MemoryExport(size: size, content: content)
        let s = try await TestServer.start([("disk", export)]) { $0.maximumRequestsInFlight = 4 }
        let client = BlockingClient(fd: try UnixSocket.connect(path: s.socket))
        defer { close(client.fd) }
        _ = try NBDGreeting.decode(try client.read(NBD.greetingSize))
        let flags = NBDClientFlags([.fixedNewstyle, .noZeroes]).rawValue
        try client.write([UInt8(flags >> 24), UInt8(flags >> 16 & 0xff), UInt8(flags >> 8 & 0xff), UInt8(flags & 0xff)])
        try client.write(NBDOption.go(NBDInfoRequest(name: "disk", items: [])).encoded())
        while true {
            let head = try client.read(NBD.optionReplyHeaderSize)
            let dataLength = Int(head[16]) << 24 | Int(head[17]) << 16 | Int(head[18]) << 8 | Int(head[19])
            let data = try client.read(dataLength)
            let reply = try #require(try NBDOptionReply.decode(head + data)?.0)
            if reply.type == .ack { break }
            #expect(!reply.type.isError)
        }
        var stream: [UInt8] = []
        for cookie in 0..<requests {
            let offset = UInt64(cookie % (size / length) * length)
            stream += NBDRequest(type: .read, cookie: UInt64(cookie), offset: offset, length: UInt32(length)).encodedHeader()
        }
        try client.write(stream)
        // 64 MiB of replies cannot sit in the socket: the server must stop
        // reading requests (its window full of replies waiting to be sent).
        #expect(await eventually { export.events.count >= 4 })
        try await Task.sleep(for: .milliseconds(300))
        let served = export.events.count
        #expect(served < requests / 2, "\(served) of \(requests) requests were served while no reply was read")
        // Reading the replies lets every request through, each answered once and right.
        var cookies: Set<UInt64> = []
        for _ in 0..<requests {
            let reply = try #require(try NBDSimpleReply.decode(try client.read(NBDSimpleReply.headerSize)))
            #expect(reply.error == nil)
            let data = try client.read(length)
            let offset = Int(reply.cookie) % (size / length) * length
            #expect(data == Array(content[offset..<offset + length]), "cookie \(reply.cookie)")
            cookies.insert(reply.cookie)
        }
        #expect(cookies == Set((0..<requests).map(UInt64.init)))
        await s.server.shutdown()
    }
}
