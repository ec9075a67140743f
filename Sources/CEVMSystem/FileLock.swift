#if canImport(Glibc)
import Glibc
#endif
import Foundation

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

    /// The open descriptor that holds the lock. A child that inherits it
    /// (`ChildProcess.spawn(inherit:)`) shares the lock: it stays held until
    /// this object and every such child have closed it.
    public var descriptor: Int32 { fd }

    /// The processes that have the file at `path` open (the holders of its
    /// lock among them), from `/proc/*/fd`: a process of another user whose
    /// descriptors cannot be read is missed. Sorted, without this process.
    public static func processesHolding(_ path: String) -> [pid_t] {
        var target = stat()
        guard stat(path, &target) == 0, let entries = try? Files.list("/proc") else { return [] }
        var found: [pid_t] = []
        for entry in entries {
            guard let pid = pid_t(entry), pid != getpid(), let fds = try? Files.list("/proc/\(entry)/fd") else { continue }
            for fd in fds {
                var st = stat()
                if stat("/proc/\(entry)/fd/\(fd)", &st) == 0 && st.st_dev == target.st_dev && st.st_ino == target.st_ino {
                    found.append(pid)
                    break
                }
            }
        }
        return found.sorted()
    }

    /// The name of a process's executable (the last part of
    /// `/proc/PID/exe`, else its `comm`), nil when it is gone.
    public static func executableName(of pid: pid_t) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(pid)/exe", &buffer, buffer.count - 1)
        if n > 0 {
            let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return path.split(separator: "/").last.map { String($0).replacingSuffix(" (deleted)") }
        }
        return (try? Files.readString("/proc/\(pid)/comm", limit: 256))?.trimmingCharacters(in: .newlines)
    }

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { close(fd) }
}

extension String {
    fileprivate func replacingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}
