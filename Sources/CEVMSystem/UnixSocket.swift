#if canImport(Glibc)
import Glibc
#endif

/// Blocking Unix stream sockets for bulk data (migration streams), used
/// from dedicated threads where a byte pump is simpler and faster than an
/// event loop.
public enum UnixSocket {
    /// socket(2) + bind(2) + listen(2) at `path` (replacing a stale socket
    /// file); the socket file is created mode 0600 (`bindPrivate`).
    public static func listen(path: String) throws -> Int32 {
        unlink(path)
        let fd = try bindPrivate(path: path)
        do {
            try retryingEINTR("listen", subject: path) { Glibc.listen(fd, 4) }
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
        return fd
    }

    /// socket(2) + fchmod(2) + bind(2): a stream socket bound at `path`,
    /// not yet listening, whose file is mode 0600 from the moment it exists.
    ///
    /// Linux gives the file bind(2) creates the socket's own inode mode
    /// minus the umask; fchmod(2) on the unbound socket sets that mode to
    /// 0600, so no other user can connect in the moment after the bind (as
    /// a chmod after the bind would allow), and no process-wide umask is
    /// touched. A file that nevertheless came out with group or other bits
    /// (a kernel that ignores the socket's mode) is removed and the call
    /// fails with EPERM rather than serve it.
    public static func bindPrivate(path: String) throws -> Int32 {
        let fd = try retryingEINTR("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do {
            try retryingEINTR("fchmod", subject: path) { fchmod(fd, 0o600) }
            _ = try withAddress(path) { address, length in
                try retryingEINTR("bind", subject: path) { bind(fd, address, length) }
            }
            var st = stat()
            try retryingEINTR("lstat", subject: path) { lstat(path, &st) }
            guard st.st_mode & 0o077 == 0 else {
                unlink(path)
                throw SystemError("bind", errno: EPERM, subject: "\(path) (created with mode 0\(String(st.st_mode & 0o777, radix: 8)), not 0600)")
            }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// accept(2), waiting at most `timeoutMilliseconds` (poll(2)); nil on timeout.
    public static func accept(_ listener: Int32, timeoutMilliseconds: Int32) throws -> Int32? {
        var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        let ready = try retryingEINTR("poll") { poll(&pfd, 1, timeoutMilliseconds) }
        if ready == 0 { return nil }
        let fd = try retryingEINTR("accept") { Glibc.accept(listener, nil, nil) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    /// socket(2) + connect(2) to `path`.
    public static func connect(path: String) throws -> Int32 {
        let fd = try retryingEINTR("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do {
            _ = try withAddress(path) { address, length in
                try retryingEINTR("connect", subject: path) { Glibc.connect(fd, address, length) }
            }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    private static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) throws -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw SystemError("bind", errno: ENAMETOOLONG, subject: path) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return try withUnsafePointer(to: &address) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                try body($0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}
