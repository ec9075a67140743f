#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem

/// Reads a VM's console log in constant memory: the previous file
/// (`console.log.1`) if there is one, then `console.log`, one chunk at a
/// time, handing on complete lines; when following, it waits at the end
/// and moves on to the new `console.log` after a rotation, having first
/// read the old one (still open here) to its end. A line longer than
/// `maximumPending` bytes is handed on in pieces. (A file rotated away and
/// replaced again between two polls, 32 MiB of console in 100 ms, would be
/// skipped.)
public struct ConsoleLogReader: Sendable {
    public let path: String
    public static let chunkSize = 64 * 1024
    public static let maximumPending = ConsoleLog.maximumLine + 64

    public init(path: String) {
        self.path = path
    }

    /// Calls `line` with every line (without its newline), oldest first.
    /// At the end of the log, `follow` (when given) decides whether to wait
    /// for more: it returns false to stop, true after it has waited. The
    /// lines written before it returned false are still read.
    public func read(follow: (() async -> Bool)? = nil, line: ([UInt8]) throws -> Void) async throws {
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: Self.chunkSize)
        func drain(_ fd: Int32) throws {
            while true {
                let n = try Files.readSome(fd, into: &buffer, subject: path)
                if n == 0 { return }
                var start = 0
                for index in 0..<n where buffer[index] == 0x0a {
                    if pending.isEmpty {
                        try line(Array(buffer[start..<index]))
                    } else {
                        pending += buffer[start..<index]
                        try line(pending)
                        pending.removeAll(keepingCapacity: true)
                    }
                    start = index + 1
                }
                pending += buffer[start..<n]
                if pending.count > Self.maximumPending {
                    try line(pending)
                    pending.removeAll(keepingCapacity: true)
                }
            }
        }

        var current = Self.open(path)
        defer { if current >= 0 { close(current) } }
        let previous = Self.open(ConsoleLog.previous(of: path))
        if previous >= 0 {
            defer { close(previous) }
            // Rotated between the two opens: the previous file is the one we hold.
            if current < 0 || Self.identity(of: previous) != Self.identity(of: current) { try drain(previous) }
        }
        while true {
            if current < 0 { current = Self.open(path) }
            if current >= 0 {
                try drain(current)
                if let now = Self.identity(atPath: path), now != Self.identity(of: current) {
                    // Rotated: the old file is complete once the writer moved on.
                    try drain(current)
                    close(current)
                    current = Self.open(path)
                    continue
                }
            }
            guard let follow, await follow() else { break }
        }
        if current >= 0 { try drain(current) }
        if !pending.isEmpty { try line(pending) }
    }

    private static func open(_ path: String) -> Int32 {
        Glibc.open(path, O_RDONLY | O_CLOEXEC)
    }

    private struct Identity: Equatable {
        var device: UInt64
        var inode: UInt64
    }

    private static func identity(of fd: Int32) -> Identity? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    private static func identity(atPath path: String) -> Identity? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }
}
