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
    private let result = Mutex<Result<RecordedMemory, any Error>?>(nil)
    private let done = AsyncSignal()
    /// Tee mode: the source's stream ended and every byte of it was passed
    /// on to the destination (whose socket was then shut down for writing),
    /// or the pump ended, having failed.
    private let forwarded = AsyncSignal()
    /// The listening socket while open and the source's connection once
    /// accepted (-1 when not open), so `abort` can wake the pump at once.
    private let descriptors: Mutex<(listener: Int32, connection: Int32)>
    private let aborted = Atomic<Bool>(false)
    /// Tee mode: the CPU set the pump moved itself to once the source's
    /// stream ended (the switch-over), as the kernel reported it after.
    let oldSideAffinity = Mutex<CPUSet?>(nil)
    private let received = Atomic<Int64>(0)
    private let splicing = Atomic<Bool>(false)

    /// Tee mode: the stream went through the kernel (splice/tee), not
    /// through this process's buffers.
    var spliced: Bool { splicing.load(ordering: .relaxed) }

    /// The bytes of the stream read from the source so far (forwarded and
    /// spooled): what the record's memory file holds once they are written.
    /// The orchestrator watches it to bound a migration that does not
    /// converge (`CheckpointOptions.maxStreamBytes`).
    var bytesReceived: Int64 { received.load(ordering: .relaxed) }

    /// Starts listening at `socketPath`; the stream is recorded as `recording` says.
    /// With `forwardTo` it is a tee (DESIGN.md step 3): every byte read from
    /// the source goes first to the destination's incoming socket, then to
    /// the spool; the destination sees EOF as soon as the source ends, and
    /// the spool is fsynced after that, while New_VM already runs.
    /// `precopy`: the CPU set the pump runs on while the stream flows (the
    /// migration's set of the policy, away from the guest's); `oldSide`: the
    /// set it moves to when the source's stream ends, to fsync the spool
    /// there (the old side's set of the policy).
    init(
        socketPath: String, recording: StreamRecording.Plan, forwardTo: String? = nil, precopy: CPUSet? = nil, oldSide: CPUSet? = nil,
        acceptTimeoutMilliseconds: Int32 = 30_000
    ) throws {
        self.socketPath = socketPath
        let listener = try UnixSocket.listen(path: socketPath)
        self.descriptors = Mutex((listener, -1))
        let thread = Thread { [self] in
            if let precopy { try? Affinity.set(thread: 0, to: precopy) }
            let outcome: Result<RecordedMemory, any Error> = Result {
                defer {
                    descriptors.withLock {
                        close(listener)
                        $0.listener = -1
                    }
                    unlink(socketPath)
                }
                // A tee hashes the spool after the stream, on the old side's CPU.
                let spool = try StreamRecording(recording, tee: forwardTo != nil)
                guard let connection = try UnixSocket.accept(listener, timeoutMilliseconds: acceptTimeoutMilliseconds) else {
                    throw SupervisorError.checkpointFailed("QEMU did not connect to the migration sink")
                }
                descriptors.withLock { $0.connection = connection }
                defer {
                    descriptors.withLock {
                        close(connection)
                        $0.connection = -1
                    }
                }
                if aborted.load(ordering: .relaxed) { throw SupervisorError.checkpointFailed("the migration stream was aborted") }
                var destination: Int32 = -1
                defer { if destination >= 0 { close(destination) } }
                if let forwardTo {
                    do { destination = try UnixSocket.connect(path: forwardTo) } catch {
                        throw SupervisorError.checkpointFailed("the tee cannot reach New_VM's incoming socket \(forwardTo): \(error)")
                    }
                }
                let spliced = destination >= 0 ? try spliceTee(from: connection, to: destination, spool: spool) : false
                if !spliced { try copy(from: connection, to: destination, spool: spool) }
                if destination >= 0 {
                    shutdown(destination, Int32(SHUT_WR))
                    forwarded.fire()
                }
                if aborted.load(ordering: .relaxed) { throw SupervisorError.checkpointFailed("the migration stream was aborted") }
                if let oldSide {
                    try? Affinity.set(thread: 0, to: oldSide)
                    oldSideAffinity.withLock { $0 = try? Affinity.get(thread: 0) }
                }
                return try spool.finish()
            }
            self.result.withLock { $0 = outcome }
            self.forwarded.fire()
            self.done.fire()
        }
        thread.start()
    }

    /// The stream through user space: read a chunk, write it on (tee mode),
    /// write it to the spool.
    private func copy(from source: Int32, to destination: Int32, spool: StreamRecording) throws {
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try Files.readSome(source, into: &buffer, subject: "migration stream")
            if n == 0 { break }
            received.add(Int64(n), ordering: .relaxed)
            if destination >= 0 { try Files.writeAll(destination, buffer[0..<n], subject: "New_VM's incoming socket") }
            try buffer.withUnsafeBytes { try spool.write(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }

    /// The tee without copies through user space: splice(2) the source into
    /// pipe A, tee(2) A into pipe B, splice A on to New_VM and B into the
    /// spool. On two CPUs the tee shares the pre-copy CPU with New_VM's
    /// receiving and QEMU's migration thread, so its cost bounds the
    /// migration's bandwidth. False, having moved nothing, when the kernel
    /// refuses to splice these descriptors (the caller then copies).
    private func spliceTee(from source: Int32, to destination: Int32, spool: StreamRecording) throws -> Bool {
        let a = try Splice.pipe(capacity: 1 << 20)
        defer { close(a.read); close(a.write) }
        let b = try Splice.pipe(capacity: a.capacity)
        defer { close(b.read); close(b.write) }
        let chunk = min(a.capacity, b.capacity)
        var held = 0  // bytes in A not yet passed on
        var first = true
        while true {
            if held == 0 {
                let n: Int
                do { n = try Splice.move(from: source, to: a.write, count: chunk, subject: "migration stream") } catch let error
                    as SystemError where first && (error.errno == EINVAL || error.errno == ENOSYS)
                {
                    return false
                }
                if first { splicing.store(true, ordering: .relaxed) }
                first = false
                if n == 0 { return true }
                received.add(Int64(n), ordering: .relaxed)
                held = n
            }
            let k = try Splice.duplicate(from: a.read, to: b.write, count: held, subject: "the tee's pipe")
            if k == 0 { throw SystemError("tee", errno: EPIPE, subject: "the tee's pipe") }
            try Splice.moveAll(from: a.read, to: destination, count: k, subject: "New_VM's incoming socket")
            try spool.append(fromPipe: b.read, count: k)
            held -= k
        }
    }

    /// Returns once the source's stream has ended and the tee has passed
    /// all of it on (or the tee has ended, having failed), or when the
    /// calling task is cancelled.
    func streamForwarded() async { await forwarded.wait() }

    /// The stream has ended (passed on, or the pump failed).
    var streamEnded: Bool { forwarded.fired }

    /// Ends the pump now, whatever the source still sends: its connection is
    /// shut down, so the blocking read returns, and the pump fails without
    /// hashing or keeping what it spooled (the caller discards the record).
    func abort() {
        aborted.store(true, ordering: .relaxed)
        descriptors.withLock { open in
            // A pump still waiting for QEMU to connect wakes up too.
            if open.connection >= 0 { shutdown(open.connection, Int32(SHUT_RDWR)) }
            if open.listener >= 0 { shutdown(open.listener, Int32(SHUT_RDWR)) }
        }
    }

    /// The sink's error if it has already failed; nil while it runs or once it succeeded.
    var failedNow: (any Error)? {
        guard case .failure(let error) = result.withLock({ $0 }) else { return nil }
        return error
    }

    /// The sink's own error, when it has already failed (or fails within
    /// `grace`): the root cause when QEMU reports only a broken pipe.
    func failure(grace: Duration = .seconds(2)) async -> (any Error)? {
        let waits: [@Sendable () async -> Void] = [
            { [done] in await done.wait() },
            { try? await Task.sleep(for: grace) },
        ]
        await firstFinished(waits)
        return failedNow
    }

    /// Waits for the end of the stream; the files are durable when this returns.
    func finish() async throws -> RecordedMemory {
        await done.wait()
        guard let outcome = result.withLock({ $0 }) else { throw SupervisorError.checkpointFailed("migration sink ended without a result") }
        return try outcome.get()
    }
}

/// A recorded memory: its files and, in record format 2, what they hold.
struct RecordedMemory: Sendable {
    var files: [RecordManifest.FileEntry]
    var memory: RecordManifest.MemoryRecord?
    /// The bytes of QEMU's stream that went through.
    var streamBytes: Int64
}

/// What a sink writes the stream into: QEMU's stream byte for byte (record
/// format 1, `memory.mig`) or parsed into pages (format 2, `PageRecorder`).
/// Used by the pump's thread alone.
final class StreamRecording {
    /// What to record, chosen by the checkpoint (a value: the recording
    /// itself is made on the pump's thread).
    enum Plan: Sendable {
        case stream(path: String)
        case pages(directory: String, parent: PageRecorder.Parent?)
        /// Pages, parsed beside the stream: the stream is written raw to a
        /// spool in `directory` as fast as the page cache takes it, and a
        /// parser thread follows the spool (`FollowingPageRecorder`). For a
        /// stopped guest (stop-and-save), whose pause lasts as long as the
        /// sink takes the stream, and a background snapshot, whose guest
        /// waits on each write fault until the sink has taken the page: the
        /// stream never waits for parsing, hashing or the image's writes.
        case spooledPages(directory: String, parent: PageRecorder.Parent?)
    }

    enum Kind {
        case stream(StreamSpool)
        case pages(PageRecorder)
        case spooled(FollowingPageRecorder)
    }

    let kind: Kind
    /// Pages: the bytes a tee's pipe holds, read to be parsed.
    private var buffer: [UInt8] = []
    private var seen: Int64 = 0

    /// `tee`: a stream spool is hashed after the stream, not while it flows.
    init(_ plan: Plan, tee: Bool) throws {
        switch plan {
        case .stream(let path): kind = .stream(try StreamSpool(path: path, hashing: tee ? .atFinish : .whileWriting))
        case .pages(let directory, let parent): kind = .pages(try PageRecorder(directory: directory, parent: parent))
        case .spooledPages(let directory, let parent): kind = .spooled(try FollowingPageRecorder(directory: directory, parent: parent))
        }
    }

    /// A recording dropped unfinished (the stream failed) stops its parser.
    deinit { if case .spooled(let recorder) = kind, !finished { recorder.cancel() } }

    private var finished = false

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        seen += Int64(chunk.count)
        switch kind {
        case .stream(let spool): try spool.write(chunk)
        case .pages(let recorder): try recorder.write(chunk)
        case .spooled(let recorder): try recorder.write(chunk)
        }
    }

    /// `count` bytes a pipe holds: spliced into the spool, or read (one copy)
    /// and parsed.
    func append(fromPipe pipe: Int32, count: Int) throws {
        switch kind {
        case .stream(let spool):
            seen += Int64(count)
            try spool.append(fromPipe: pipe, count: count)
        case .spooled(let recorder):
            seen += Int64(count)
            try recorder.append(fromPipe: pipe, count: count)
        case .pages:
            if buffer.count < count { buffer = [UInt8](repeating: 0, count: count) }
            var filled = 0
            while filled < count {
                let n = buffer.withUnsafeMutableBytes { raw in Glibc.read(pipe, raw.baseAddress! + filled, count - filled) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SystemError("read", errno: errno, subject: "the tee's pipe")
                }
                if n == 0 { throw RecordError.writeFailed(path: "the tee's pipe", reason: "ended \(count - filled) bytes early") }
                filled += n
            }
            try buffer.withUnsafeBytes { try write(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        }
    }

    func finish() throws -> RecordedMemory {
        switch kind {
        case .stream(let spool): return RecordedMemory(files: [try spool.finish(role: .memory)], memory: nil, streamBytes: seen)
        case .pages(let recorder):
            let (files, memory) = try recorder.finish()
            return RecordedMemory(files: files, memory: memory, streamBytes: seen)
        case .spooled(let recorder):
            finished = true
            let (files, memory) = try recorder.finish()
            return RecordedMemory(files: files, memory: memory, streamBytes: seen)
        }
    }
}

enum MigrationSource {
    /// Streams `file` into the socket at `socketPath` (retrying the connect
    /// while QEMU creates it), on a thread; returns the bytes sent.
    static func feed(file: String, socketPath: String, timeout: Duration = .seconds(30)) async throws -> Int64 {
        try await feed(socketPath: socketPath, timeout: timeout) { emit in
            let input = open(file, O_RDONLY | O_CLOEXEC)
            if input < 0 { throw SystemError("open", errno: errno, subject: file) }
            defer { close(input) }
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var total: Int64 = 0
            while true {
                let n = try Files.readSome(input, into: &buffer, subject: file)
                if n == 0 { break }
                try buffer.withUnsafeBytes { try emit(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                total += Int64(n)
            }
            return total
        }
    }

    /// Streams what `produce` emits into the socket at `socketPath`, on a
    /// thread; returns what `produce` returns (the bytes sent).
    static func feed(
        socketPath: String, timeout: Duration = .seconds(30),
        produce: @escaping @Sendable (_ emit: (UnsafeRawBufferPointer) throws -> Void) throws -> Int64
    ) async throws -> Int64 {
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
                    return try produce { chunk in try Files.writeAll(fd, chunk, subject: "incoming migration socket") }
                })
            }
            thread.start()
        }
    }
}
