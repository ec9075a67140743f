import CEVMSystem
import NBDProtocol
import NBDServer
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `BlockingExport` and `FileDevice` called directly, without a server.
@Suite struct ExportTests {
    @Test func aFileExportReadsWritesAndZeroes() async throws {
        let scratch = try Scratch()
        let path = scratch.file("f.raw")
        try writeFile(path, [UInt8](repeating: 0xaa, count: 3 << 20))
        let export = try FileExport(path: path, writable: true)
        #expect(export.size == 3 << 20)
        #expect(export.capabilities == .writable)
        try await export.write(offset: 10, data: ByteBuffer(bytes: [1, 2, 3]), fua: true)
        let read = try await export.read(offset: 8, length: 7, allocator: ByteBufferAllocator())
        #expect(Array(read.readableBytesView) == [0xaa, 0xaa, 1, 2, 3, 0xaa, 0xaa])
        // More than one chunk of zeroes, unaligned at both ends.
        try await export.writeZeroes(offset: 100, length: (2 << 20) + 5, fua: false, mayTrim: true)
        try await export.trim(offset: 0, length: 4096, fua: false)
        try await export.flush()
        let bytes = try readFile(path)
        #expect(bytes[99] == 0xaa && bytes[(2 << 20) + 105] == 0xaa)
        #expect(bytes[100..<((2 << 20) + 105)].allSatisfy { $0 == 0 })
    }

    @Test func aReadOnlyFileExportOffersNoWrites() throws {
        let scratch = try Scratch()
        let path = scratch.file("ro.raw")
        try writeFile(path, [1, 2, 3, 4])
        let export = try FileExport(path: path, writable: false)
        #expect(export.capabilities.contains(.readOnly))
        #expect(NBDExportInfo(name: "ro", size: export.size, capabilities: export.capabilities).transmissionFlags.contains(.readOnly))
        #expect(throws: SystemError.self) { try FileExport(path: scratch.file("missing"), writable: false) }
        #expect(throws: SystemError.self) { try FileExport(path: scratch.path, writable: false) }
    }

    /// Device errors become NBD errors: ENOSPC stays ENOSPC, the rest EIO.
    @Test func deviceErrorsAreMappedToNBDErrors() async throws {
        struct Broken: NBDBlockDevice {
            var size: UInt64 { 1 << 20 }
            func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
                throw SystemError("pread", errno: EIO, subject: "broken")
            }
            func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
                throw SystemError("pwrite", errno: ENOSPC, subject: "broken")
            }
            func flush() throws { throw NBDIOError.notSupported("no flush here") }
            func discard(at offset: UInt64, count: UInt64) throws {}
            func writeZeroes(at offset: UInt64, count: UInt64, mayDeallocate: Bool) throws {
                throw SystemError("pwrite", errno: EROFS)
            }
        }
        let export = BlockingExport(device: Broken(), capabilities: .writable)
        #expect(
            await Self.failure { () async throws(NBDIOError) in _ = try await export.read(offset: 0, length: 1, allocator: ByteBufferAllocator()) }
                == NBDIOError(.io, "pread broken: Input/output error (errno 5)"))
        #expect(await Self.failure { () async throws(NBDIOError) in try await export.write(offset: 0, data: ByteBuffer(bytes: [1]), fua: false) }?.kind == .noSpace)
        #expect(await Self.failure { () async throws(NBDIOError) in try await export.flush() } == .notSupported("no flush here"))
        #expect(await Self.failure { () async throws(NBDIOError) in try await export.writeZeroes(offset: 0, length: 1, fua: false, mayTrim: false) }?.kind == .notPermitted)
        #expect(await Self.failure { () async throws(NBDIOError) in try await export.trim(offset: 0, length: 1, fua: false) } == nil)
    }

    /// The error `body` throws, nil if it succeeds.
    static func failure(_ body: () async throws(NBDIOError) -> Void) async -> NBDIOError? {
        do {
            try await body()
            return nil
        } catch {
            return error
        }
    }

    @Test func aStoppedThreadPoolFailsCallsWithEIO() async throws {
        let scratch = try Scratch()
        let path = scratch.file("p.raw")
        try writeFile(path, [0, 0])
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let export = try FileExport(path: path, writable: true, threadPool: pool)
        #expect(try await export.read(offset: 0, length: 2, allocator: ByteBufferAllocator()).readableBytes == 2)
        try await pool.shutdownGracefully()
        let failure = await Self.failure { () async throws(NBDIOError) in _ = try await export.read(offset: 0, length: 2, allocator: ByteBufferAllocator()) }
        #expect(failure?.kind == .io)
    }
}
