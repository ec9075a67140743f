import CEVMSystem
import NBDProtocol
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// A raw image file as an `NBDBlockDevice`: pread(2), pwrite(2),
/// fdatasync(2), EINTR retried. The size is the file's size when opened.
/// Discard does nothing (trim is a hint) and write-zeroes writes zero bytes:
/// hole punching needs fallocate(2), which the C library module does not
/// expose to Swift without a shim.
public final class FileDevice: NBDBlockDevice {
    public let path: String
    public let size: UInt64
    public let isWritable: Bool
    private let fd: Int32

    /// Opens an existing file (read-only unless `writable`).
    public init(path: String, writable: Bool) throws(SystemError) {
        let fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("open", errno: errno, subject: path) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let code = errno
            close(fd)
            throw SystemError("fstat", errno: code, subject: path)
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw SystemError("open", errno: EINVAL, subject: "\(path) (not a regular file)")
        }
        self.fd = fd
        self.path = path
        self.size = UInt64(st.st_size)
        self.isWritable = writable
    }

    deinit { close(fd) }

    /// What a `BlockingExport` over this file offers.
    public var capabilities: NBDExportCapabilities {
        isWritable ? .writable : [.readOnly, .flush, .multiConnection]
    }

    /// pread(2) until `buffer` is full; bytes past the end of the file read as zero.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset + UInt64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("pread", errno: errno, subject: "\(path) at 0x\(String(offset, radix: 16))")
            }
            if n == 0 {
                UnsafeMutableRawBufferPointer(rebasing: buffer[done...]).initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            done += n
        }
    }

    /// pwrite(2) until all of `buffer` is written.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = pwrite(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset + UInt64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("pwrite", errno: errno, subject: "\(path) at 0x\(String(offset, radix: 16))")
            }
            done += n
        }
    }

    /// fdatasync(2).
    public func flush() throws {
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            throw SystemError("fdatasync", errno: errno, subject: path)
        }
    }

    /// Does nothing: discarding is a hint.
    public func discard(at offset: UInt64, count: UInt64) throws {}

    /// Writes zero bytes over the range, 1 MiB at a time.
    public func writeZeroes(at offset: UInt64, count: UInt64, mayDeallocate: Bool) throws {
        let chunk = [UInt8](repeating: 0, count: Int(min(count, 1 << 20)))
        var done: UInt64 = 0
        while done < count {
            let n = Int(min(UInt64(chunk.count), count - done))
            try chunk.withUnsafeBytes { raw in
                try write(UnsafeRawBufferPointer(rebasing: raw[0..<n]), at: offset + done)
            }
            done += UInt64(n)
        }
    }
}

/// A raw file served through a `BlockingExport`.
public typealias FileExport = BlockingExport<FileDevice>

extension BlockingExport where Device == FileDevice {
    /// Opens the raw file at `path` and serves it (read-only unless `writable`).
    public init(path: String, writable: Bool, threadPool: NIOThreadPool = .singleton) throws(SystemError) {
        let device = try FileDevice(path: path, writable: writable)
        self.init(device: device, capabilities: device.capabilities, threadPool: threadPool)
    }
}
