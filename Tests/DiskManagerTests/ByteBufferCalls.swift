import NIOCore

@testable import DiskManager

/// The disk's plain-buffer calls with ByteBuffers, as `DiskExport` makes
/// them (the reply's buffer filled in place, the request's lent).
extension ManagedDisk {
    func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator, alone: Bool = false) async throws(DiskManagerError) -> ByteBuffer {
        try await read(offset: offset, length: length, alone: alone) { length, fill in
            var buffer = allocator.buffer(capacity: length)
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { raw in
                fill(UnsafeMutableRawBufferPointer(rebasing: raw[0..<length]))
                return length
            }
            return buffer
        }
    }

    func write(offset: UInt64, data: ByteBuffer, fua: Bool = false, alone: Bool = false) async throws(DiskManagerError) {
        try await write(offset: offset, count: data.readableBytes, fua: fua, alone: alone) { body in
            data.withUnsafeReadableBytes(body)
        }
    }
}
