import NBDProtocol
import NIOCore

/// A failed export operation: the NBD error the client receives and a
/// message the server logs (the client never sees the message).
public struct NBDIOError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The error value sent in the reply.
    public var kind: NBDErrno
    public var message: String

    public init(_ kind: NBDErrno, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// `NBD_EIO`: the store failed.
    public static func io(_ message: String) -> NBDIOError { NBDIOError(.io, message) }
    /// `NBD_ENOSPC`: the store is full.
    public static func noSpace(_ message: String) -> NBDIOError { NBDIOError(.noSpace, message) }
    /// `NBD_EINVAL`: the export cannot take this request.
    public static func invalid(_ message: String) -> NBDIOError { NBDIOError(.invalid, message) }
    /// `NBD_EPERM`: the export refuses to be changed.
    public static func notPermitted(_ message: String) -> NBDIOError { NBDIOError(.notPermitted, message) }
    /// `NBD_ENOTSUP`.
    public static func notSupported(_ message: String) -> NBDIOError { NBDIOError(.notSupported, message) }

    public var description: String { "\(kind): \(message)" }
}

/// What the server serves: a block device of fixed size, as async calls.
///
/// The server validates every request before it reaches the export: ranges
/// lie inside `size`, are non-empty and no longer than the maximum payload
/// for reads and writes; writes never reach a read-only export; flush, trim
/// and write-zeroes only arrive when `capabilities` offers them. Calls for
/// one connection may run concurrently (up to the server's in-flight limit)
/// and complete in any order; calls from several connections too.
///
/// Threads: the calls are made from tasks that run on the connection's event
/// loop, so they must never block it: hand blocking I/O to a thread of your
/// own (`BlockingExport` uses a `NIOThreadPool`) and return when it is done.
///
/// Durability contract: `flush()` returns once every write that completed
/// before it was called is on stable storage; a call with `fua: true`
/// returns once its own data is.
public protocol NBDExport: Sendable {
    /// Size in bytes; read once, when the export is added to the server.
    var size: UInt64 { get }
    var capabilities: NBDExportCapabilities { get }

    /// Exactly `length` bytes at `offset` (a shorter buffer is answered `NBD_EIO`).
    func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator) async throws(NBDIOError) -> ByteBuffer
    func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(NBDIOError)
    func flush() async throws(NBDIOError)
    /// A hint that the range is no longer needed; the content afterwards is
    /// unspecified until written again.
    func trim(offset: UInt64, length: Int, fua: Bool) async throws(NBDIOError)
    /// The range must read back as zeros; `mayTrim` false (`NBD_CMD_FLAG_NO_HOLE`)
    /// asks that it stays allocated.
    func writeZeroes(offset: UInt64, length: Int, fua: Bool, mayTrim: Bool) async throws(NBDIOError)
}

extension NBDExport {
    /// Read-only exports need not implement the writing calls: the server
    /// never sends them one. These answer `NBD_EPERM` / `NBD_ENOTSUP`.
    public func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(NBDIOError) {
        throw .notPermitted("the export is read-only")
    }

    public func flush() async throws(NBDIOError) {
        throw .notSupported("the export does not implement flush")
    }

    public func trim(offset: UInt64, length: Int, fua: Bool) async throws(NBDIOError) {
        throw .notSupported("the export does not implement trim")
    }

    public func writeZeroes(offset: UInt64, length: Int, fua: Bool, mayTrim: Bool) async throws(NBDIOError) {
        throw .notSupported("the export does not implement write zeroes")
    }
}

/// What an export's call may know of the request it serves.
public enum NBDRequestContext {
    /// While an export's call runs for a request: how many requests of that
    /// connection were admitted and not yet answered when it started, itself
    /// included (1: the client waits for this one alone, depth 1). 0 outside
    /// a request. An export may use it to decide how to serve the call
    /// (`ManagedDisk` does the I/O on the caller's thread at depth 1).
    @TaskLocal public static var requestsInFlight = 0
}
