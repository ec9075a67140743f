#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Records
import TestSupport
import Testing

@testable import Supervisor

/// The tee of a CEVM checkpoint on real Unix sockets: every byte the source
/// sends reaches the destination and the spool, in order, and the spool's
/// digest is the file's.
@Suite struct StreamTeeTests {
    @Test(arguments: [1, 70_000, 5 << 20 | 12_345])
    func everyByteReachesTheDestinationAndTheSpool(size: Int) async throws {
        let scratch = try Scratch()
        let stream = pattern(size, seed: UInt8(size % 251))
        let destinationPath = scratch.file("in.sock")
        let listener = try UnixSocket.listen(path: destinationPath)
        defer { close(listener) }
        // The destination: accept, read to the end.
        let received = Task.detached { () throws -> [UInt8] in
            guard let fd = try UnixSocket.accept(listener, timeoutMilliseconds: 10_000) else { throw SystemError("accept", errno: ETIMEDOUT, subject: "the tee did not connect") }
            defer { close(fd) }
            var all: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = try Files.readSome(fd, into: &buffer, subject: "destination")
                if n == 0 { return all }
                all += buffer[0..<n]
            }
        }
        let tee = try MigrationSink(
            socketPath: scratch.file("tee.sock"), spoolPath: scratch.file("memory.mig"), forwardTo: destinationPath)
        // The source: connect, send everything in uneven pieces, close.
        let source = try UnixSocket.connect(path: tee.socketPath)
        var offset = 0
        var piece = 1
        while offset < stream.count {
            let end = min(stream.count, offset + piece)
            try Files.writeAll(source, stream[offset..<end], subject: "source")
            offset = end
            piece = piece * 3 + 17
        }
        close(source)
        let entry = try await tee.finish()
        #expect(try await received.value == stream)
        #expect(entry.size == Int64(size))
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: scratch.file("memory.mig")))) == stream)
        // The digest the tee recorded, against one computed independently
        // (coreutils' sha256sum) of the bytes the source sent, not of the spool.
        try Files.writeAtomically(stream, to: scratch.file("sent"))
        let sent = try runTool(["sha256sum", scratch.file("sent")])
        #expect(sent.status == 0, "\(sent.output)")
        #expect(entry.sha256 == sent.output.split(separator: " ").first.map(String.init), "\(sent.output)")
        #expect(tee.bytesReceived == Int64(size))
        #expect(tee.spliced, "Unix sockets splice: the stream never passed through the tee's buffers")
    }
}
