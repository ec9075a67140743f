#if canImport(Glibc)
import Glibc
#endif
import CSystemShims
import Synchronization

/// Numbers the temporary files of `Files.writeAtomically` in this process.
private let temporaryCounter = Atomic<UInt64>(0)

/// Small file-system operations with the durability cevm needs.
public enum Files {
    /// mkdir(2) with `mode`, creating parents. A directory made here gets
    /// exactly `mode` (chmod(2) after mkdir, whatever the umask); an
    /// existing one is accepted as it is: cevm never changes the mode of a
    /// directory it did not create (`CEVM_HOME=$HOME` must not touch
    /// `$HOME`). Returns true when the directory `path` was created.
    @discardableResult
    public static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws -> Bool {
        var prefix = path.hasPrefix("/") ? "" : "."
        var created = false
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, mode) == 0 {
                created = true
                // Parents made here too: the umask may have narrowed them.
                if chmod(prefix, mode) != 0 { throw SystemError("chmod", errno: errno, subject: prefix) }
            } else if errno == EEXIST {
                created = false
                if !isDirectory(prefix) { throw SystemError("mkdir", errno: ENOTDIR, subject: prefix) }
            } else {
                throw SystemError("mkdir", errno: errno, subject: prefix)
            }
        }
        return created
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Reads a whole file (bounded by `limit` bytes).
    public static func read(_ path: String, limit: Int = 64 << 20) throws -> [UInt8] {
        let fd = try retryingEINTR("open", subject: path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try readSome(fd, into: &chunk, subject: path)
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
            if out.count > limit {
                throw SystemError("read", errno: EFBIG, subject: "\(path) (over \(limit) bytes)")
            }
        }
        return out
    }

    /// The last `bytes` bytes of a file (all of a smaller one), as text.
    public static func readTail(_ path: String, bytes: Int) throws -> String {
        let fd = try retryingEINTR("open", subject: path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 { throw SystemError("fstat", errno: errno, subject: path) }
        if Int64(st.st_size) > Int64(bytes) { lseek(fd, off_t(Int64(st.st_size) - Int64(bytes)), SEEK_SET) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while out.count < bytes {
            let n = try readSome(fd, into: &chunk, subject: path)
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<min(n, bytes - out.count)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func readString(_ path: String, limit: Int = 64 << 20) throws -> String {
        String(decoding: try read(path, limit: limit), as: UTF8.self)
    }

    /// read(2) into `buffer`, retrying EINTR; returns the byte count, 0 at
    /// end of file.
    public static func readSome(_ fd: Int32, into buffer: inout [UInt8], subject: String? = nil) throws -> Int {
        try buffer.withUnsafeMutableBytes { raw in
            try retryingEINTR("read", subject: subject) { Glibc.read(fd, raw.baseAddress, raw.count) }
        }
    }

    /// Bytes an unprivileged writer may still use on the file system that
    /// holds `path` (statvfs(3)); nil when it cannot be asked.
    public static func availableBytes(_ path: String) -> Int64? {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return nil }
        let (bytes, overflow) = Int64(info.f_bavail).multipliedReportingOverflow(by: Int64(info.f_frsize))
        return overflow ? Int64.max : bytes
    }

    /// Writes all of `bytes` to `fd`, retrying short writes and EINTR.
    public static func writeAll(_ fd: Int32, _ bytes: some Collection<UInt8>, subject: String? = nil) throws {
        let array = Array(bytes)
        var offset = 0
        while offset < array.count {
            let n = try array.withUnsafeBytes { buf in
                try retryingEINTR("write", subject: subject) {
                    Glibc.write(fd, buf.baseAddress.map { $0 + offset }, buf.count - offset)
                }
            }
            offset += n
        }
    }

    /// Starts write-back of every dirty page of `fd` without waiting
    /// (sync_file_range(2) with SYNC_FILE_RANGE_WRITE); a later fsync(2)
    /// then waits for less. Best effort: false when the call failed.
    @discardableResult
    public static func startWriteback(_ fd: Int32) -> Bool {
        cevm_start_writeback(fd) == 0
    }

    /// fsync(2) of a path (a file or a directory).
    public static func fsync(path: String) throws {
        let fd = try retryingEINTR("open", subject: path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        try retryingEINTR("fsync", subject: path) { Glibc.fsync(fd) }
    }

    /// Replaces `path` atomically and durably: writes a temporary name in the
    /// same directory, fsyncs it, renames it over `path`, fsyncs the directory.
    /// A crash leaves either the old content or the new, never a mix.
    public static func writeAtomically(_ bytes: some Collection<UInt8>, to path: String, mode: mode_t = 0o600) throws {
        let directory = parent(of: path)
        // A name of this write alone: concurrent writers (threads of one
        // process too) never share a temporary file.
        let temporary = "\(path).tmp-\(getpid())-\(temporaryCounter.add(1, ordering: .relaxed).newValue)"
        let fd = try retryingEINTR("open", subject: temporary) {
            open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        }
        do {
            try writeAll(fd, bytes, subject: temporary)
            try retryingEINTR("fsync", subject: temporary) { Glibc.fsync(fd) }
            close(fd)
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        if Glibc.rename(temporary, path) != 0 {
            let code = errno
            unlink(temporary)
            throw SystemError("rename", errno: code, subject: "\(temporary) -> \(path)")
        }
        try fsync(path: directory)
    }

    /// Appends to a file opened O_APPEND, creating it with `mode`.
    public static func openForAppend(_ path: String, mode: mode_t = 0o600) throws -> Int32 {
        try retryingEINTR("open", subject: path) { open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, mode) }
    }

    /// rename(2), then fsync of the destination's directory so the new name
    /// survives a crash.
    public static func rename(_ source: String, to destination: String) throws {
        guard Glibc.rename(source, destination) == 0 else {
            throw SystemError("rename", errno: errno, subject: "\(source) -> \(destination)")
        }
        try fsync(path: parent(of: destination))
    }

    public static func remove(_ path: String) {
        unlink(path)
    }

    /// Names in a directory, without "." and "..", sorted.
    public static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw SystemError("opendir", errno: errno, subject: path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }

    /// stat(2) size in bytes.
    public static func size(_ path: String) throws -> Int64 {
        var st = stat()
        if stat(path, &st) != 0 { throw SystemError("stat", errno: errno, subject: path) }
        return Int64(st.st_size)
    }
}
