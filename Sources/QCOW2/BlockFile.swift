#if canImport(Glibc)
import Glibc
#endif

/// One open host file with positioned I/O. Every call retries EINTR and
/// short transfers; reads past the end of the file return zeros.
final class BlockFile: Sendable {
    let fd: Int32
    let path: String

    /// open(2).
    init(path: String, writable: Bool, create: Bool = false) throws(QCOW2Error) {
        var flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC
        if create { flags |= O_CREAT | O_EXCL }
        var fd: Int32
        repeat { fd = open(path, flags, 0o644) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw .io(call: "open", errno: errno, path: path, offset: 0) }
        self.fd = fd
        self.path = path
    }

    deinit { close(fd) }

    /// fstat(2) size.
    func size() throws(QCOW2Error) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io(call: "fstat", errno: errno, path: path, offset: 0) }
        return UInt64(st.st_size)
    }

    /// pread(2) into `buffer`; bytes past the end of the file read as zero.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset + UInt64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(call: "pread", errno: errno, path: path, offset: offset + UInt64(done))
            }
            if n == 0 {
                let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[done...])
                rest.initializeMemory(as: UInt8.self, repeating: 0)
                return
            }
            done += n
        }
    }

    func read(at offset: UInt64, count: Int) throws(QCOW2Error) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var failure: QCOW2Error?
        out.withUnsafeMutableBytes { buf in
            do throws(QCOW2Error) { try read(into: buf, at: offset) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// pwrite(2) of all of `buffer`.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        var done = 0
        while done < buffer.count {
            let n = pwrite(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset + UInt64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(call: "pwrite", errno: errno, path: path, offset: offset + UInt64(done))
            }
            done += n
        }
    }

    func write(_ bytes: [UInt8], at offset: UInt64) throws(QCOW2Error) {
        var failure: QCOW2Error?
        bytes.withUnsafeBytes { buf in
            do throws(QCOW2Error) { try write(buf, at: offset) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// fdatasync(2).
    func sync() throws(QCOW2Error) {
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            throw .io(call: "fdatasync", errno: errno, path: path, offset: 0)
        }
    }
}

/// Something a qcow2 image can read its backing data from: another qcow2
/// image or a raw file. Reads at or past `virtualSize` return zeros.
public protocol BlockReader: AnyObject, Sendable {
    var virtualSize: UInt64 { get }
    var path: String { get }
    /// Fills `buffer` with the guest bytes at `offset` (through the whole
    /// chain below this layer); bytes past `virtualSize` read as zero.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error)
}

extension BlockReader {
    /// Reads `count` guest bytes at `offset`.
    public func read(at offset: UInt64, count: Int) throws(QCOW2Error) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var failure: QCOW2Error?
        out.withUnsafeMutableBytes { buf in
            do throws(QCOW2Error) { try read(into: buf, at: offset) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }
}

/// A raw disk image, read-only (used as a backing file).
public final class RawImage: BlockReader {
    public let path: String
    public let virtualSize: UInt64
    let file: BlockFile

    public init(path: String) throws(QCOW2Error) {
        self.path = path
        file = try BlockFile(path: path, writable: false)
        virtualSize = try file.size()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        let inside = offset >= virtualSize ? 0 : Int(min(UInt64(buffer.count), virtualSize - offset))
        if inside > 0 { try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<inside]), at: offset) }
        if inside < buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[inside...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }
}
