#if canImport(Glibc)
import Glibc
#endif

/// An exclusive flock(2) held for the life of this object (or until
/// `release`). The kernel drops it when the process dies, so a crashed
/// owner never leaves a stale lock behind.
public final class FileLock: Sendable {
    public let path: String
    private let fd: Int32

    /// Takes the lock without waiting; returns nil when another process holds it.
    public static func tryAcquire(_ path: String) throws -> FileLock? {
        let fd = try retryingEINTR("open", subject: path) { open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            close(fd)
            if code == EWOULDBLOCK { return nil }
            throw SystemError("flock", errno: code, subject: path)
        }
        return FileLock(path: path, fd: fd)
    }

    /// True when some process holds the lock at `path` now.
    public static func isHeld(_ path: String) -> Bool {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { return false }
        defer { close(fd) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 { return errno == EWOULDBLOCK }
        flock(fd, LOCK_UN)
        return false
    }

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { close(fd) }
}
