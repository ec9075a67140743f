import DiskManager
import NBDProtocol
import NBDServer
import NIOCore
import QCOW2

#if canImport(Glibc)
import Glibc
#endif

/// A `ManagedDisk` as an NBD export: what QEMU's `-blockdev driver=nbd`
/// talks to. Flush and FUA make writes durable through the qcow2 engine;
/// write-zeroes is offered (zero clusters, in bounded steps, in plain mode
/// and during an integration: `ManagedDisk.writeZeroes`); trim is not (a
/// discarded cluster of an overlay would read B's bytes, not zeros, and the
/// integration protocol knows only reads and writes).
///
/// The disk knows nothing of NIO: a read fills the reply's `ByteBuffer`
/// in place (`ManagedDisk.ReadBuffer`) and a write lends the request's
/// payload bytes (`ManagedDisk.Payload`), so neither is copied on the way.
public struct DiskExport: NBDExport {
    public let disk: ManagedDisk
    public init(disk: ManagedDisk) { self.disk = disk }

    public var size: UInt64 { disk.virtualSize }
    public var capabilities: NBDExportCapabilities { [.flush, .fua, .writeZeroes, .multiConnection] }

    public func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator) async throws(NBDIOError) -> ByteBuffer {
        do {
            return try await disk.read(offset: offset, length: length, alone: Self.alone) { length, fill in
                var buffer = allocator.buffer(capacity: length)
                buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { raw in
                    fill(UnsafeMutableRawBufferPointer(rebasing: raw[0..<length]))
                    return length
                }
                return buffer
            }
        } catch {
            throw Self.nbd(error)
        }
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(NBDIOError) {
        do {
            try await disk.write(offset: offset, count: data.readableBytes, fua: fua, alone: Self.alone) { body in
                data.withUnsafeReadableBytes(body)
            }
        } catch {
            throw Self.nbd(error)
        }
    }

    public func flush() async throws(NBDIOError) {
        do { try await disk.flush() } catch { throw Self.nbd(error) }
    }

    public func writeZeroes(offset: UInt64, length: Int, fua: Bool, mayTrim: Bool) async throws(NBDIOError) {
        do {
            try await disk.writeZeroes(offset: offset, length: UInt64(length), fua: fua)
        } catch {
            throw Self.nbd(error)
        }
    }

    /// The request is the only one its connection has in flight (depth 1).
    static var alone: Bool { NBDRequestContext.requestsInFlight == 1 }

    /// A disk error as the NBD reply's error: a request outside the disk is
    /// EINVAL, a full host file system ENOSPC, anything else EIO.
    static func nbd(_ error: DiskManagerError) -> NBDIOError {
        switch error {
        case .outOfRange: return .invalid(error.description)
        case .image(.io(_, let code, _, _)) where code == ENOSPC: return .noSpace(error.description)
        default: return .io(error.description)
        }
    }
}
