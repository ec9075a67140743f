#if canImport(Glibc)
import Glibc
#endif

/// The write bandwidth of a directory's file system, as the benchmarks
/// measure it beside what they time.
public enum WriteBandwidth {
    /// Bytes per second of a plain write of `bytes` into a new file in
    /// `directory`, 1 MiB at a time, then `fdatasync` (what `dd
    /// conv=fdatasync` measures); the file is removed.
    public static func measure(directory: String, bytes: Int64) throws -> Double {
        let path = "\(directory)/.bench-write-\(getpid())"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError("open", errno: errno, subject: path) }
        defer {
            close(fd)
            Files.remove(path)
        }
        // Not zeros and not one repeated page: nothing on the way may elide them.
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var state: UInt64 = 0x9e37_79b9_7f4a_7c15
        for index in chunk.indices {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            chunk[index] = UInt8(truncatingIfNeeded: state >> 56)
        }
        let start = Timestamp.monotonic()
        var left = max(bytes, 1 << 20)
        let total = left
        while left > 0 {
            let count = Int(min(left, Int64(chunk.count)))
            try Files.writeAll(fd, chunk[0..<count], subject: path)
            left -= Int64(count)
        }
        guard fdatasync(fd) == 0 else { throw SystemError("fdatasync", errno: errno, subject: path) }
        let seconds = Timestamp.monotonic() - start
        return seconds > 0 ? Double(total) / seconds : 0
    }
}
