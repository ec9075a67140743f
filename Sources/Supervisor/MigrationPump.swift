#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import CSystemShims
import Foundation
import Records
import Synchronization

/// Byte pumps for migration streams, each on its own thread: blocking
/// read/write loops are the simplest fast path for a single bulk stream.
///
/// `MigrationSink` listens on a Unix socket that QEMU's `migrate` connects
/// to and spools the stream into a record file (never QEMU's exec URI: no shell
/// ever parses a path). `MigrationSource` connects to the socket of a QEMU
/// started with `-incoming defer` + `migrate-incoming` and feeds it a
/// recorded stream.
final class MigrationSink: Sendable {
    let socketPath: String
    private let result = Mutex<Result<RecordManifest.FileEntry, any Error>?>(nil)
    private let done = AsyncSignal()

    /// Starts listening at `socketPath`; the stream goes to `spoolPath`.
    init(socketPath: String, spoolPath: String, acceptTimeoutMilliseconds: Int32 = 30_000) throws {
        self.socketPath = socketPath
        let listener = try UnixSocket.listen(path: socketPath)
        let thread = Thread { [self] in
            let outcome: Result<RecordManifest.FileEntry, any Error> = Result {
                defer {
                    close(listener)
                    unlink(socketPath)
                }
                let spool = try StreamSpool(path: spoolPath)
                guard let connection = try UnixSocket.accept(listener, timeoutMilliseconds: acceptTimeoutMilliseconds) else {
                    throw SupervisorError.checkpointFailed("QEMU did not connect to the migration sink")
                }
                defer { close(connection) }
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                while true {
                    let n = try Files.readSome(connection, into: &buffer, subject: "migration stream")
                    if n == 0 { break }
                    try buffer.withUnsafeBytes { try spool.write(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                }
                return try spool.finish(role: .memory)
            }
            self.result.withLock { $0 = outcome }
            self.done.fire()
        }
        thread.start()
    }

    /// The sink's own error, when it has already failed (or fails within
    /// `grace`): the root cause when QEMU reports only a broken pipe.
    func failure(grace: Duration = .seconds(2)) async -> (any Error)? {
        let waits: [@Sendable () async -> Void] = [
            { [done] in await done.wait() },
            { try? await Task.sleep(for: grace) },
        ]
        await race(waits)
        guard case .failure(let error) = result.withLock({ $0 }) else { return nil }
        return error
    }

    /// Waits for the end of the stream; the file is durable when this returns.
    func finish() async throws -> RecordManifest.FileEntry {
        await done.wait()
        guard let outcome = result.withLock({ $0 }) else { throw SupervisorError.checkpointFailed("migration sink ended without a result") }
        return try outcome.get()
    }
}

enum MigrationSource {
    /// Streams `file` into the socket at `socketPath` (retrying the connect
    /// while QEMU creates it), on a thread; returns the bytes sent.
    static func feed(file: String, socketPath: String, timeout: Duration = .seconds(30)) async throws -> Int64 {
        let deadline = ContinuousClock.now + timeout
        var connection: Int32 = -1
        while connection < 0 {
            if let fd = try? UnixSocket.connect(path: socketPath) {
                connection = fd
            } else if ContinuousClock.now > deadline {
                throw SupervisorError.restoreFailed("QEMU's incoming socket \(socketPath) did not accept within \(timeout)")
            } else {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let fd = connection
        return try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                continuation.resume(with: Result {
                    defer { close(fd) }
                    let input = open(file, O_RDONLY | O_CLOEXEC)
                    if input < 0 { throw SystemError("open", errno: errno, subject: file) }
                    defer { close(input) }
                    var buffer = [UInt8](repeating: 0, count: 1 << 20)
                    var total: Int64 = 0
                    while true {
                        let n = try Files.readSome(input, into: &buffer, subject: file)
                        if n == 0 { break }
                        try Files.writeAll(fd, buffer[0..<n], subject: "incoming migration socket")
                        total += Int64(n)
                    }
                    return total
                })
            }
            thread.start()
        }
    }
}

/// Copies a file with copy_file_range(2) (in-kernel, no user-space buffer)
/// and fsyncs the copy; returns its manifest entry.
enum FileCopy {
    static func copy(_ source: String, to destination: String, role: RecordManifest.FileEntry.Role) throws -> RecordManifest.FileEntry {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        if input < 0 { throw SystemError("open", errno: errno, subject: source) }
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if output < 0 { throw RecordError.writeFailed(path: destination, reason: String(cString: strerror(errno))) }
        defer { close(output) }
        var inKernel = true
        var buffer: [UInt8] = []
        while true {
            if inKernel {
                let n = cevm_copy_file_range(input, output, 1 << 30)
                if n > 0 { continue }
                if n == 0 { break }
                if errno == EINTR { continue }
                // Across file systems (EXDEV) or where unsupported: copy through user space.
                guard errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL else {
                    throw RecordError.writeFailed(path: destination, reason: String(cString: strerror(errno)))
                }
                inKernel = false
                buffer = [UInt8](repeating: 0, count: 1 << 20)
            }
            let n = try Files.readSome(input, into: &buffer, subject: source)
            if n == 0 { break }
            do { try Files.writeAll(output, buffer[0..<n], subject: destination) } catch let error as SystemError {
                throw RecordError.writeFailed(path: destination, reason: String(cString: strerror(error.errno)))
            }
        }
        if fsync(output) != 0 { throw RecordError.writeFailed(path: destination, reason: String(cString: strerror(errno))) }
        let name = destination.split(separator: "/").last.map(String.init) ?? destination
        return .init(name: name, role: role, size: try Files.size(destination), sha256: try FileDigest.sha256(of: destination))
    }
}
