#if canImport(Glibc)
import Glibc
#endif
import CSystemShims

/// Byte moves inside the kernel between a descriptor and a pipe (splice(2))
/// and between two pipes without consuming (tee(2)): a stream tee that
/// never copies its bytes through user space.
public enum Splice {
    /// A pipe of about `capacity` bytes (F_SETPIPE_SZ; the kernel may give
    /// less, up to /proc/sys/fs/pipe-max-size): its ends and the capacity
    /// it got.
    public static func pipe(capacity: Int) throws -> (read: Int32, write: Int32, capacity: Int) {
        var fds: [Int32] = [-1, -1]
        let got = fds.withUnsafeMutableBufferPointer { cevm_pipe($0.baseAddress, Int32(capacity)) }
        if got < 0 { throw SystemError("pipe2", errno: errno) }
        return (fds[0], fds[1], Int(got))
    }

    /// splice(2) of up to `count` bytes, EINTR retried: the bytes moved, 0
    /// at the end of `from`.
    public static func move(from: Int32, to: Int32, count: Int, subject: String) throws -> Int {
        try retryingEINTR("splice", subject: subject) { cevm_splice(from, to, UInt(count)) }
    }

    /// Moves exactly `count` bytes (`from` must hold them: a pipe filled before).
    public static func moveAll(from: Int32, to: Int32, count: Int, subject: String) throws {
        var left = count
        while left > 0 {
            let n = try move(from: from, to: to, count: left, subject: subject)
            if n == 0 { throw SystemError("splice", errno: EPIPE, subject: subject) }
            left -= n
        }
    }

    /// tee(2) of up to `count` bytes of pipe `from` into pipe `to`, EINTR
    /// retried: the bytes duplicated (they stay in `from` as well).
    public static func duplicate(from: Int32, to: Int32, count: Int, subject: String) throws -> Int {
        try retryingEINTR("tee", subject: subject) { cevm_tee(from, to, UInt(count)) }
    }
}
