#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation

/// A version 2 memory recorded from a stream that must not wait for the
/// parser: the stream is taken as fast as it comes into a queue, and a
/// thread of its own parses the queue into the page image (`PageRecorder`)
/// behind it. When the stream ends, only what the parser has not reached
/// yet is left to do.
///
/// The queue holds up to `memoryLimit` bytes in memory, in 1 MiB chunks
/// that are used again once parsed; what comes while it is full is
/// appended to a scratch spool file beside the record (`spoolName`) and
/// queued as a range of it, so the stream never waits and memory stays
/// bounded. Memory first: on a host whose page cache is cold, every byte
/// written to a new file costs a fresh page, and a spool doubles what a
/// record writes.
///
/// For a stopped guest (stop-and-save), whose pause lasts as long as the
/// sink takes the stream, and a background snapshot, whose guest waits on
/// each write fault until the sink has taken the page. While the stream
/// flows the parser runs at a lower priority (nice 10) than the thread
/// that takes the stream; once the stream has ended it runs at the normal
/// one, since the record's durability then waits on it alone.
///
/// One thread writes (`write`, `append`, then `finish` or `cancel`); the
/// parser thread is the only other user, and hands the recorder back under
/// the lock when it ends.
public final class FollowingPageRecorder: @unchecked Sendable {
    /// The spool of what did not fit in memory, removed once parsed (or with
    /// the record's directory).
    public static let spoolName = "memory.stream-spool"
    public static let defaultMemoryLimit = 256 << 20
    static let chunkSize = 1 << 20
    /// Nice value of the parser while the stream flows.
    static let followingNice: Int32 = 10

    enum Segment {
        case memory([UInt8], count: Int)
        case spooled(offset: Int64, count: Int64)
    }

    let recorder: PageRecorder
    let memoryLimit: Int
    let spoolPath: String

    // The writer's own:
    private var chunk: [UInt8]
    private var filled = 0
    private var spool: StreamSpool?
    /// Bytes of the stream taken so far.
    public private(set) var bytes: Int64 = 0
    /// Bytes of the stream that went through the spool file.
    public private(set) var spooledBytes: Int64 = 0

    private let condition = NSCondition()
    // Guarded by `condition`:
    private var queue: [Segment] = []
    private var queuedMemory = 0
    private var spare: [[UInt8]] = []
    private var ended = false
    private var cancelled = false
    private var done = false
    private var failure: (any Error)?
    private var parserThread: pid_t = 0

    public init(directory: String, parent: PageRecorder.Parent?, memoryLimit: Int = FollowingPageRecorder.defaultMemoryLimit) throws {
        self.memoryLimit = max(memoryLimit, Self.chunkSize)
        spoolPath = "\(directory)/\(Self.spoolName)"
        recorder = try PageRecorder(directory: directory, parent: parent)
        chunk = [UInt8](repeating: 0, count: Self.chunkSize)
        let thread = Thread { [self] in follow() }
        thread.name = "cevm-page-parser"
        thread.start()
    }

    deinit { spool?.remove() }

    /// The next bytes of the stream. Throws the parser's error, once it has
    /// one: the stream is not worth taking further.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let count = min(Self.chunkSize - filled, bytes.count - done)
            chunk.withUnsafeMutableBytes { raw in
                raw.baseAddress!.advanced(by: filled).copyMemory(from: bytes.baseAddress!.advanced(by: done), byteCount: count)
            }
            filled += count
            done += count
            if filled == Self.chunkSize { try enqueue() }
        }
        self.bytes += Int64(bytes.count)
    }

    /// `count` bytes a pipe holds, read (one copy) into the queue.
    public func append(fromPipe pipe: Int32, count: Int) throws {
        var left = count
        while left > 0 {
            let want = min(Self.chunkSize - filled, left)
            let n = chunk.withUnsafeMutableBytes { raw in Glibc.read(pipe, raw.baseAddress!.advanced(by: filled), want) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("read", errno: errno, subject: "the tee's pipe")
            }
            if n == 0 { throw RecordError.writeFailed(path: "the tee's pipe", reason: "ended \(left) bytes early") }
            filled += n
            left -= n
            bytes += Int64(n)
            if filled == Self.chunkSize { try enqueue() }
        }
    }

    /// Queues the chunk being filled: in memory if the queue has room, else
    /// appended to the spool.
    private func enqueue() throws {
        guard filled > 0 else { return }
        condition.lock()
        if let failure {
            condition.unlock()
            throw failure
        }
        if queuedMemory + filled <= memoryLimit {
            queue.append(.memory(chunk, count: filled))
            queuedMemory += filled
            chunk = spare.popLast() ?? []
            condition.signal()
            condition.unlock()
            if chunk.isEmpty { chunk = [UInt8](repeating: 0, count: Self.chunkSize) }
            filled = 0
            return
        }
        condition.unlock()
        if spool == nil { spool = try StreamSpool(path: spoolPath, hashing: .scratch) }
        guard let spool else { return }
        let offset = spool.bytes
        try chunk.withUnsafeBytes { try spool.write(UnsafeRawBufferPointer(rebasing: $0[0..<filled])) }
        spooledBytes += Int64(filled)
        condition.lock()
        if case .spooled(let start, let count)? = queue.last, start + count == offset {
            queue[queue.count - 1] = .spooled(offset: start, count: count + Int64(filled))
        } else {
            queue.append(.spooled(offset: offset, count: Int64(filled)))
        }
        condition.signal()
        condition.unlock()
        filled = 0
    }

    /// The stream ended: waits for the parser to reach its end, then makes
    /// the record's memory durable (`PageRecorder.finish`) and removes the
    /// spool.
    public func finish() throws -> (files: [RecordManifest.FileEntry], memory: RecordManifest.MemoryRecord) {
        do { try enqueue() } catch {
            cancel()
            throw error
        }
        condition.lock()
        ended = true
        if parserThread != 0 { Affinity.setNice(thread: parserThread, 0) }
        condition.signal()
        while !done { condition.wait() }
        let failure = self.failure
        condition.unlock()
        if let failure {
            spool?.remove()
            throw failure
        }
        let result = try recorder.finish()
        spool?.remove()
        return result
    }

    /// Stops the parser (the checkpoint failed) and removes the spool.
    public func cancel() {
        condition.lock()
        cancelled = true
        condition.signal()
        while !done { condition.wait() }
        condition.unlock()
        spool?.remove()
    }

    private func follow() {
        condition.lock()
        if !ended {
            parserThread = Affinity.currentThreadID()
            Affinity.setNice(thread: parserThread, Self.followingNice)
        }
        condition.unlock()
        var outcome: (any Error)?
        do { try parse() } catch { outcome = error }
        condition.lock()
        failure = outcome
        done = true
        parserThread = 0
        condition.broadcast()
        condition.unlock()
    }

    private func parse() throws {
        var spoolFD: Int32 = -1
        defer { if spoolFD >= 0 { close(spoolFD) } }
        var buffer: [UInt8] = []
        while true {
            condition.lock()
            while queue.isEmpty && !ended && !cancelled { condition.wait() }
            if cancelled || queue.isEmpty {
                condition.unlock()
                return
            }
            let segment = queue.removeFirst()
            condition.unlock()
            switch segment {
            case .memory(let bytes, let count):
                try bytes.withUnsafeBytes { try recorder.write(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
                condition.lock()
                queuedMemory -= count
                spare.append(bytes)
                condition.unlock()
            case .spooled(let offset, let count):
                if spoolFD < 0 {
                    spoolFD = open(spoolPath, O_RDONLY | O_CLOEXEC)
                    guard spoolFD >= 0 else {
                        throw RecordError.writeFailed(path: spoolPath, reason: "reading the spooled stream: \(String(cString: strerror(errno)))")
                    }
                    buffer = [UInt8](repeating: 0, count: Self.chunkSize)
                }
                var at = offset
                while at < offset + count {
                    let want = Int(min(offset + count - at, Int64(buffer.count)))
                    let n = buffer.withUnsafeMutableBytes { pread(spoolFD, $0.baseAddress, want, off_t(at)) }
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw RecordError.writeFailed(path: spoolPath, reason: "reading the spooled stream back: \(String(cString: strerror(errno)))")
                    }
                    if n == 0 { throw RecordError.writeFailed(path: spoolPath, reason: "the spool ended at \(at) of \(offset + count) bytes") }
                    try buffer.withUnsafeBytes { try recorder.write(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                    at += Int64(n)
                }
            }
        }
    }
}
