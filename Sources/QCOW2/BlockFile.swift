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

    /// `offset + count` as an off_t, or EOVERFLOW naming `call` (off_t is
    /// signed: Swift traps converting a value of 2^63 or more).
    func position(_ offset: UInt64, _ count: Int, call: String) throws(QCOW2Error) -> off_t {
        guard let end = checkedSum(offset, UInt64(count)), end <= UInt64(Int64.max) else {
            throw .io(call: call, errno: EOVERFLOW, path: path, offset: offset)
        }
        return off_t(offset)
    }

    /// pread(2) into `buffer`; bytes past the end of the file read as zero.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        _ = try position(offset, buffer.count, call: "pread")
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

    /// preadv2(2) with RWF_NOWAIT into all of `buffer`: true when the page
    /// cache served it at once, false when the kernel would have had to wait
    /// for the disk (EAGAIN), or gave less (the caller then reads it the
    /// blocking way, which also handles the end of the file).
    func readWithoutWaiting(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) -> Bool {
        guard let preadv2 = Self.preadv2 else { return false }
        let start = try position(offset, buffer.count, call: "preadv2")
        while true {
            var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
            let n = preadv2(fd, &vector, 1, start, Self.rwfNoWait)
            if n >= 0 { return n == buffer.count }
            switch errno {
            case EINTR: continue
            case EAGAIN, EOPNOTSUPP, ENOSYS: return false
            default: throw .io(call: "preadv2", errno: errno, path: path, offset: offset)
            }
        }
    }

    /// glibc's preadv2(2), looked up at run time: Swift's Glibc module does
    /// not declare it (it is a _GNU_SOURCE function). Nil without it (then
    /// every read waits its turn on the I/O thread).
    typealias Preadv2 = @convention(c) (Int32, UnsafePointer<iovec>?, Int32, off_t, Int32) -> Int
    static let preadv2: Preadv2? = {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "preadv2") else { return nil }
        return unsafeBitCast(symbol, to: Preadv2.self)
    }()
    /// RWF_NOWAIT from <linux/fs.h>: fail with EAGAIN rather than wait for I/O.
    static let rwfNoWait: Int32 = 0x0000_0008

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
        _ = try position(offset, buffer.count, call: "pwrite")
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
    /// The same read, only if it needs neither a wait for the disk nor for
    /// another caller of this layer: false (with `buffer` partly written)
    /// when it would have had to wait. For a caller that must not block,
    /// such as an event loop, which then hands the read to a thread that
    /// may.
    func readWithoutWaiting(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) -> Bool
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
        _ = try read(into: buffer, at: offset, waiting: true)
    }

    public func readWithoutWaiting(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) -> Bool {
        try read(into: buffer, at: offset, waiting: false)
    }

    private func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, waiting: Bool) throws(QCOW2Error) -> Bool {
        let inside = offset >= virtualSize ? 0 : Int(min(UInt64(buffer.count), virtualSize - offset))
        if inside > 0 {
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<inside])
            if waiting {
                try file.read(into: piece, at: offset)
            } else if try !file.readWithoutWaiting(into: piece, at: offset) {
                return false
            }
        }
        if inside < buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[inside...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
        return true
    }
}
