import Foundation
import NBDProtocol
import NBDServer
import DiskExportNBD
import NIOCore
import QCOW2
import Synchronization
import TestSupport
import Testing

@testable import DiskManager

/// Plain-mode I/O on the disk's own thread, and the buffer-based calls the
/// NBD export uses (no copy through arrays in plain mode).
@Suite struct PlainModeTests {
    final class Log: Sendable {
        let entries = Mutex<[Int]>([])
    }

    @Test func ioThreadRunsJobsInSubmissionOrderAndDrains() async {
        let io = IOThread(name: "cevm-test-io")
        let log = Log()
        for i in 0..<2000 { io.submit { log.entries.withLock { $0.append(i) } } }
        io.drain()
        #expect(log.entries.withLock { $0 } == Array(0..<2000))
        // Jobs from several threads: each thread's own stay in order, none is lost.
        let perThread = 500
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<4 {
                group.addTask { for i in 0..<perThread { io.submit { log.entries.withLock { $0.append(10_000 * (t + 1) + i) } } } }
            }
        }
        io.drain()
        let all = log.entries.withLock { $0 }
        #expect(all.count == 2000 + 4 * perThread)
        for t in 0..<4 {
            let mine = all.filter { $0 / 10_000 == t + 1 }
            #expect(mine == (0..<perThread).map { 10_000 * (t + 1) + $0 })
        }
        io.stop()
    }

    /// Reads and writes through `DiskExport` (ByteBuffers, as the NBD server
    /// calls it) agree with the model, in plain mode and while an
    /// integration runs; the image ends as the model.
    @Test(arguments: [false, true])
    func bufferCallsMatchTheModel(integrating: Bool) async throws {
        var f = try IntegrationRunTests.Fixture(size: 2 << 20, seed: integrating ? 41 : 40)
        let export = DiskExport(disk: f.disk)
        let allocator = ByteBufferAllocator()
        let integration = integrating ? try f.disk.cut(u: try f.newU(), record: nil, incremental: false) : nil
        var random = SeededRandom(seed: 42)
        let size = f.model.count
        for _ in 0..<300 {
            let offset = Int.random(in: 0..<size - 1, using: &random)
            let length = min(Int.random(in: 1...20000, using: &random), size - offset)
            switch Int.random(in: 0..<8, using: &random) {
            case 0..<3:
                let got = try await export.read(offset: UInt64(offset), length: length, allocator: allocator)
                #expect(Array(got.readableBytesView) == Array(f.model[offset..<offset + length]), "read \(length) at \(offset)")
            case 3:
                try await export.writeZeroes(offset: UInt64(offset), length: length, fua: false, mayTrim: false)
                f.model.replaceSubrange(offset..<offset + length, with: repeatElement(0, count: length))
            case 4:
                try await export.flush()
            default:
                let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
                // A payload sliced out of a larger buffer, as the server passes it.
                var frame = allocator.buffer(capacity: length + 32)
                frame.writeBytes([UInt8](repeating: 0xEE, count: 32))
                frame.writeBytes(bytes)
                frame.moveReaderIndex(forwardBy: 32)
                try await export.write(offset: UInt64(offset), data: frame, fua: Bool.random(using: &random))
                f.model.replaceSubrange(offset..<offset + length, with: bytes)
            }
        }
        if let integration {
            _ = try await integration.wait()
            f.disk.settle()
        } else {
            // Reads of data the page cache held, and writes over clusters T
            // held, were served on the caller's thread.
            #expect(f.disk.readsServedInline > 0)
            #expect(f.disk.writesServedInline > 0)
        }
        try await export.flush()
        try f.expectImage(f.disk.top.path, equals: f.model, "top")
    }

    /// Writes over clusters T holds go inline; one that took too long sends
    /// the following ones to the I/O thread for the pause. Either way the
    /// image ends up as the model says.
    @Test func aSlowInlineWritePausesInlineWrites() async throws {
        let f = try IntegrationRunTests.Fixture(size: 1 << 20, seed: 44)
        let cluster = 1 << f.clusterBits
        for (slow, pause, inline) in [(Duration.seconds(3600), Duration.zero, 20), (.zero, .seconds(3600), 1)] {
            let disk = ManagedDisk(top: f.disk.top, slowInlineWrite: slow, inlineWritePause: pause)
            var model = f.model
            // Larger than any inline write: it goes to the I/O thread, and
            // makes T hold the clusters.
            let first = pattern(cluster * 5, seed: 1)
            try await disk.write(offset: UInt64(cluster * 5), data: ByteBuffer(bytes: first))
            model.replaceSubrange(cluster * 5..<cluster * 10, with: first)
            let before = disk.writesServedInline
            for k in 0..<20 {
                let bytes = pattern(512, seed: UInt8(k + 2))
                let offset = cluster * 5 + 100 + k * 7
                try await disk.write(offset: UInt64(offset), data: ByteBuffer(bytes: bytes))
                model.replaceSubrange(offset..<offset + 512, with: bytes)
            }
            #expect(disk.writesServedInline - before == inline, "slow \(slow), pause \(pause)")
            try await disk.flush()
            #expect(Array(try await disk.read(offset: 0, length: f.size)) == model)
        }
    }

    /// Alone (its client has nothing else in flight: depth 1) a cached read
    /// of up to 256 KiB is served on the caller's thread; a larger one is
    /// not, nor one of over 16 KiB when others are in flight.
    @Test func aLoneCachedReadOfUpTo256KiBIsServedInline() async throws {
        let f = try IntegrationRunTests.Fixture(size: 1 << 20, seed: 45)
        let allocator = ByteBufferAllocator()
        for (length, alone, inline) in [(64 << 10, true, true), (256 << 10, true, true), (512 << 10, true, false), (64 << 10, false, false), (16 << 10, false, true)] {
            _ = try await f.disk.read(offset: 0, length: f.size, allocator: allocator)  // caches the tables and the data
            let before = f.disk.readsServedInline
            let got = try await f.disk.read(offset: 4096, length: length, allocator: allocator, alone: alone)
            #expect(Array(got.readableBytesView) == Array(f.model[4096..<4096 + length]))
            #expect((f.disk.readsServedInline - before == 1) == inline, "\(length) bytes, alone: \(alone)")
        }
    }

    @Test func bufferCallsRefuseRangesOutsideTheDisk() async throws {
        let f = try IntegrationRunTests.Fixture(size: 1 << 20, seed: 43)
        let allocator = ByteBufferAllocator()
        await #expect(throws: DiskManagerError.self) {
            _ = try await f.disk.read(offset: UInt64(1 << 20) - 10, length: 11, allocator: allocator)
        }
        await #expect(throws: DiskManagerError.self) {
            try await f.disk.write(offset: UInt64.max - 1, data: ByteBuffer(bytes: [1, 2, 3]))
        }
        let export = DiskExport(disk: f.disk)
        do {
            try await export.write(offset: UInt64(1 << 20) - 1, data: ByteBuffer(bytes: [1, 2]), fua: false)
            Issue.record("a write past the end succeeded")
        } catch {
            #expect(error.kind == .invalid)
        }
        try await f.disk.flush()
        try f.expectImage(f.disk.top.path, equals: f.model, "top")
    }
}
