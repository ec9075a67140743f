import CEVMSystem
import NBDProtocol
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// A synchronous, pointer-based block device: calls block the calling
/// thread on disk I/O (a qcow2 image, a raw file). `BlockingExport` runs
/// them on a thread pool. Implementations must be safe to call from several
/// threads at once.
public protocol NBDBlockDevice: Sendable {
    /// Size in bytes.
    var size: UInt64 { get }
    /// Fills all of `buffer` with the bytes at `offset`.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Makes every completed write durable.
    func flush() throws
    /// Deallocates what it can of the range (a hint; may do nothing).
    func discard(at offset: UInt64, count: UInt64) throws
    /// Makes the range read as zeros; `mayDeallocate` false asks that it
    /// stays allocated.
    func writeZeroes(at offset: UInt64, count: UInt64, mayDeallocate: Bool) throws
}

/// An `NBDExport` over an `NBDBlockDevice`: every call runs on a
/// `NIOThreadPool`, so blocking I/O never runs on an event loop. FUA is a
/// write followed by the device's `flush()`.
///
/// The thread pool belongs to the caller (`NIOThreadPool.singleton` by
/// default); a pool that is shut down makes every call fail with `NBD_EIO`.
/// Errors thrown by the device are turned into `NBDIOError` by `mapError`
/// (by default: an `NBDIOError` as is, a `SystemError` by its errno, anything
/// else `NBD_EIO`), with the device's description as the logged message.
public struct BlockingExport<Device: NBDBlockDevice>: NBDExport {
    public let device: Device
    public let capabilities: NBDExportCapabilities
    public let threadPool: NIOThreadPool
    public let mapError: @Sendable (any Error) -> NBDIOError

    public var size: UInt64 { device.size }

    public init(
        device: Device, capabilities: NBDExportCapabilities, threadPool: NIOThreadPool = .singleton,
        mapError: @escaping @Sendable (any Error) -> NBDIOError = defaultErrorMapping
    ) {
        self.device = device
        self.capabilities = capabilities
        self.threadPool = threadPool
        self.mapError = mapError
    }

    public func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator) async throws(NBDIOError) -> ByteBuffer {
        let device = self.device
        return try await run {
            var buffer = allocator.buffer(capacity: length)
            try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { raw in
                try device.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<length]), at: offset)
                return length
            }
            return buffer
        }
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(NBDIOError) {
        let device = self.device
        try await run {
            try data.withUnsafeReadableBytes { raw in try device.write(raw, at: offset) }
            if fua { try device.flush() }
        }
    }

    public func flush() async throws(NBDIOError) {
        let device = self.device
        try await run { try device.flush() }
    }

    public func trim(offset: UInt64, length: Int, fua: Bool) async throws(NBDIOError) {
        let device = self.device
        try await run {
            try device.discard(at: offset, count: UInt64(length))
            if fua { try device.flush() }
        }
    }

    public func writeZeroes(offset: UInt64, length: Int, fua: Bool, mayTrim: Bool) async throws(NBDIOError) {
        let device = self.device
        try await run {
            try device.writeZeroes(at: offset, count: UInt64(length), mayDeallocate: mayTrim)
            if fua { try device.flush() }
        }
    }

    private func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws(NBDIOError) -> T {
        do {
            return try await threadPool.runIfActive(body)
        } catch {
            throw mapError(error)
        }
    }

    /// `NBDIOError` as is; `SystemError` by errno (ENOSPC, EDQUOT, EFBIG →
    /// `NBD_ENOSPC`; EROFS, EPERM, EACCES → `NBD_EPERM`; EINVAL → `NBD_EINVAL`);
    /// anything else `NBD_EIO`.
    public static func defaultErrorMapping(_ error: any Error) -> NBDIOError {
        if let error = error as? NBDIOError { return error }
        if let error = error as? SystemError {
            switch error.errno {
            case ENOSPC, EDQUOT, EFBIG: return .noSpace("\(error)")
            case EROFS, EPERM, EACCES: return .notPermitted("\(error)")
            case EINVAL: return .invalid("\(error)")
            default: return .io("\(error)")
            }
        }
        if error is NIOThreadPoolError.ThreadPoolInactive || error is CancellationError {
            return .io("the I/O thread pool is shut down, or the call was cancelled")
        }
        return .io("\(error)")
    }
}
