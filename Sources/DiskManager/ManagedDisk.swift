import DiskIntegration
import Dispatch
import Foundation
import QCOW2
import Synchronization

/// One VM disk as the disk manager serves it: plain mode (reads T, else B;
/// writes T) between checkpoints, integration mode (`Integration`) from a
/// checkpoint's switch-over until UPDATE_DONE, then plain mode on U. The
/// object stays the same across modes, so the NBD export and New_VM's
/// connection never change.
///
/// It also keeps the set of clusters written since the last cut: the
/// clusters an incremental disk record must hold.
public final class ManagedDisk: Sendable {
    enum Mode {
        case plain(QCOW2Image)
        case integrating(Integration, next: QCOW2Image)
    }

    public let virtualSize: UInt64
    public let clusterSize: UInt64
    let mode: Mutex<Mode>
    let dirty = Mutex(Set<Int>())
    /// Plain-mode I/O blocks on pread/pwrite/fdatasync: it runs on this
    /// thread of the disk's own, in submission order, never on the caller's.
    let io = IOThread(name: "cevm-disk-io")
    private let inlineReads = Atomic<Int>(0)
    private let largestZeroesChunk = Atomic<UInt64>(0)
    /// `writeZeroesChunk` in whole clusters.
    private let zeroesChunk: UInt64
    private let inlineWrites = Atomic<Int>(0)
    /// Inline writes between their registration (under the mode lock, in
    /// plain mode) and the end of their pwrite.
    let inFlight = InlineWrites()
    /// Test hook: runs in an inline write after it registered, before its pwrite.
    let inlineWriteHook: (@Sendable () -> Void)?
    /// No write is served on the caller's thread before this instant
    /// (DispatchTime nanoseconds): one that took `slowInlineWrite` or more
    /// stops them for `inlineWritePause`.
    private let inlineWritesPausedUntil = Atomic<UInt64>(0)
    /// `slowInlineWrite` and `inlineWritePause` in nanoseconds.
    private let slowInlineWriteNs: UInt64
    private let inlineWritePauseNs: UInt64

    public convenience init(top: QCOW2Image) {
        self.init(top: top, slowInlineWrite: .milliseconds(1), inlineWritePause: .seconds(1))
    }

    /// `slowInlineWrite`, `inlineWritePause`: an inline write that took the
    /// first stops inline writes for the second. The page cache was then
    /// throttling writers or reclaiming, and likely goes on doing so for a
    /// while; meanwhile writes wait on the I/O thread, not on the event loop.
    /// `writeZeroesChunk`: the most one step of a write-zeroes covers
    /// (rounded up to a cluster; tests make it small).
    init(
        top: QCOW2Image, slowInlineWrite: Duration, inlineWritePause: Duration,
        writeZeroesChunk: UInt64 = ManagedDisk.writeZeroesChunk, inlineWriteHook: (@Sendable () -> Void)? = nil
    ) {
        self.inlineWriteHook = inlineWriteHook
        virtualSize = top.virtualSize
        clusterSize = top.clusterSize
        zeroesChunk = (max(writeZeroesChunk, 1) + top.clusterSize - 1) / top.clusterSize * top.clusterSize
        mode = Mutex(.plain(top))
        slowInlineWriteNs = Self.nanoseconds(slowInlineWrite)
        inlineWritePauseNs = Self.nanoseconds(inlineWritePause)
    }

    deinit {
        io.stop()
    }

    /// The image writes go to in plain mode (T; U once an integration ended).
    public var top: QCOW2Image {
        mode.withLock { mode in
            switch mode {
            case .plain(let image): image
            case .integrating(let integration, _): integration.layers.t
            }
        }
    }

    public var isIntegrating: Bool {
        mode.withLock { if case .integrating = $0 { true } else { false } }
    }

    // MARK: - Guest requests

    public func read(offset: UInt64, length: Int) async throws(DiskManagerError) -> [UInt8] {
        try check(offset, UInt64(length))
        return try await perform(
            integrating: { .read(offset: Int(offset), length: length, $0) },
            fromIntegration: { $0 },
            plain: { image throws(QCOW2Error) in
                try image.read(at: offset, count: length)
            })
    }

    /// Where a read's bytes go, made by the caller (an NBD reply's buffer):
    /// given the length, it makes a buffer with room for that many bytes,
    /// calls `fill` exactly once with exactly `length` bytes of its storage,
    /// and returns the buffer. The disk reads straight into that storage.
    /// It may be called on any thread, and more than once for one read (a
    /// buffer the inline attempt could not fill is dropped).
    public typealias ReadBuffer<Buffer> = @Sendable (_ length: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) -> Buffer

    /// A write's payload as the caller holds it (an NBD request's buffer),
    /// lent to `body` for the duration of the call; the disk writes straight
    /// from it, copying it only for an integration (which keeps requests in
    /// a queue). It may be called on any thread, more than once.
    public typealias Payload = @Sendable (_ body: (UnsafeRawBufferPointer) -> Void) -> Void

    /// The same read into a buffer the caller makes (`ReadBuffer`): in
    /// plain mode the image reads straight into it. A small read the page
    /// cache holds (`inlineLimit`; `inlineLimitAlone` if the caller says
    /// the request is `alone`, its client's only one in flight) is served at
    /// once on the caller's thread (the NBD connection's event loop) without
    /// the round trip through the I/O thread; any other goes there.
    public func read<Buffer: Sendable>(
        offset: UInt64, length: Int, alone: Bool = false, into make: @escaping ReadBuffer<Buffer>
    ) async throws(DiskManagerError) -> Buffer {
        try check(offset, UInt64(length))
        if length <= inlineLimit(alone: alone), let buffer = readWithoutWaiting(offset: offset, length: length, into: make) {
            return buffer
        }
        return try await perform(
            integrating: { .read(offset: Int(offset), length: length, $0) },
            fromIntegration: { bytes in
                make(length) { target in
                    precondition(target.count == length, "a ReadBuffer must lend exactly the length asked for")
                    bytes.withUnsafeBytes { target.copyMemory(from: $0) }
                }
            },
            plain: { image throws(QCOW2Error) in
                var failure: QCOW2Error?
                let buffer = make(length) { target in
                    precondition(target.count == length, "a ReadBuffer must lend exactly the length asked for")
                    do throws(QCOW2Error) { try image.read(into: target, at: offset) } catch { failure = error }
                }
                if let failure { throw failure }
                return buffer
            })
    }

    public func write(offset: UInt64, bytes: [UInt8], fua: Bool = false) async throws(DiskManagerError) {
        try check(offset, UInt64(bytes.count))
        try await perform(
            marking: (offset, UInt64(bytes.count)),
            integrating: { .write(offset: Int(offset), bytes: bytes, $0) },
            fromIntegration: { _ in },
            plain: { image throws(QCOW2Error) in
                try image.write(bytes, at: offset)
            })
        if fua { try await flush() }
    }

    /// The same write from the caller's buffer (`Payload`, exactly `count`
    /// bytes): in plain mode the image writes straight from it. A small
    /// write over clusters T already holds (the same limits as reads) is
    /// done at once on the caller's thread (the NBD connection's event
    /// loop), without the round trip through the I/O thread; any other goes
    /// there.
    public func write(
        offset: UInt64, count: Int, fua: Bool = false, alone: Bool = false, from payload: @escaping Payload
    ) async throws(DiskManagerError) {
        try check(offset, UInt64(count))
        if count <= inlineLimit(alone: alone), writeWithoutWaiting(offset: offset, count: count, from: payload) {
            if fua { try await flush() }
            return
        }
        try await perform(
            marking: (offset, UInt64(count)),
            integrating: { completion in
                var bytes: [UInt8] = []
                payload { raw in
                    precondition(raw.count == count, "a Payload must lend exactly the count given")
                    bytes = Array(raw)
                }
                return .write(offset: Int(offset), bytes: bytes, completion)
            },
            fromIntegration: { _ in },
            plain: { image throws(QCOW2Error) in
                var failure: QCOW2Error?
                payload { raw in
                    precondition(raw.count == count, "a Payload must lend exactly the count given")
                    do throws(QCOW2Error) { try image.write(raw, at: offset) } catch { failure = error }
                }
                if let failure { throw failure }
            })
        if fua { try await flush() }
    }

    /// Zeroes `length` bytes (an NBD WRITE_ZEROES: up to 4 GiB, no
    /// payload). Done in chunks of at most `writeZeroesChunk` bytes, each
    /// one request of its own (to the I/O thread, or to the integration as a
    /// write of zeros), so neither the memory nor the time one step holds
    /// the image or the integration's thread grows with the request: no
    /// buffer of zeros is ever made (the qcow2 engine writes zero clusters,
    /// and zeros from one cluster-sized buffer at the edges). The chunks are
    /// aligned to `writeZeroesChunk`, a multiple of the cluster size, so
    /// only the request's own edges split a cluster. `fua`: one flush after
    /// the last chunk.
    public func writeZeroes(offset: UInt64, length: UInt64, fua: Bool = false) async throws(DiskManagerError) {
        try check(offset, length)
        let chunk = zeroesChunk
        var position = offset
        let end = offset + length
        while position < end {
            let count = min(chunk - position % chunk, end - position)
            let at = position
            _ = largestZeroesChunk.max(count, ordering: .relaxed)
            try await perform(
                marking: (at, count),
                integrating: { .writeZeroes(offset: Int(at), length: Int(count), $0) },
                fromIntegration: { _ in },
                plain: { image throws(QCOW2Error) in
                    try image.writeZeroes(at: at, count: count)
                })
            position += count
        }
        if fua { try await flush() }
    }

    /// The most one step of a write-zeroes covers: 32 MiB, the largest
    /// payload an NBD WRITE may carry, so a zeroing step is no longer than
    /// a write the disk already serves (512 clusters of 64 KiB).
    static let writeZeroesChunk: UInt64 = 32 << 20

    /// The largest chunk a write-zeroes was cut into so far (for tests: no
    /// step of a write-zeroes is as large as the request).
    var largestWriteZeroesStep: UInt64 { largestZeroesChunk.load(ordering: .relaxed) }

    public func flush() async throws(DiskManagerError) {
        try await perform(
            integrating: { .flush($0) },
            fromIntegration: { _ in },
            plain: { image throws(QCOW2Error) in
                try image.flush()
            })
    }

    /// The largest read or write served on the caller's thread while other
    /// requests are in flight. Larger ones go to the I/O thread even when
    /// cached: their copy to or from the page cache is long enough that
    /// doing it there, beside the event loop, pays for the hand-off (64 KiB
    /// reads at depth 16 ran at 0.4–1.5× qemu-nbd inline, bimodal with where
    /// the scheduler put the loop and the client).
    static let inlineLimit = 16 * 1024

    /// The largest served on the caller's thread when the caller says the
    /// request is `alone`: its client has no other in flight (depth 1, as a
    /// guest doing O_DIRECT I/O issues them; `NBDRequestContext`). Nothing
    /// else waits for the loop then, and the hand-off would be two wake-ups
    /// for the one request.
    static let inlineLimitAlone = 256 * 1024

    private func inlineLimit(alone: Bool) -> Int { alone ? Self.inlineLimitAlone : Self.inlineLimit }

    /// Reads served on the caller's thread (`readWithoutWaiting`), for
    /// statistics and tests.
    public var readsServedInline: Int { inlineReads.load(ordering: .relaxed) }

    /// Writes served on the caller's thread (`writeWithoutWaiting`).
    public var writesServedInline: Int { inlineWrites.load(ordering: .relaxed) }

    /// Plain mode only, under the mode lock (as a queued request would be,
    /// so a cut never overtakes it), and only if neither the image's lock,
    /// an L2 table nor the disk would make it wait (`RWF_NOWAIT`: the lock
    /// is never held across a wait). Nil: go the usual way (which also
    /// reports any error).
    private func readWithoutWaiting<Buffer>(offset: UInt64, length: Int, into make: ReadBuffer<Buffer>) -> Buffer? {
        let buffer: Buffer? = mode.withLock { mode in
            guard case .plain(let image) = mode else { return nil }
            var served = false
            let buffer = make(length) { target in
                precondition(target.count == length, "a ReadBuffer must lend exactly the length asked for")
                served = (try? image.readWithoutWaiting(into: target, at: offset)) ?? false
            }
            return served ? buffer : nil
        }
        if buffer != nil { inlineReads.add(1, ordering: .relaxed) }
        return buffer
    }

    /// Plain mode only, and only if the write changes no table of T (every
    /// cluster it touches is data T holds, its L2 table cached) and T's lock
    /// is free. pwrite into the page cache cannot be asked not to wait (ext4
    /// refuses RWF_NOWAIT on buffered writes), so the mode lock is not held
    /// across it (a cut, which takes that lock, would wait behind a
    /// throttled write): under the lock the write checks for plain mode and
    /// registers itself in flight (`InlineWrites`), and the integration's
    /// thread waits for every write registered before the cut before it
    /// freezes S0. A slow one pauses the inline path. False: go the usual
    /// way (which also reports any error).
    private func writeWithoutWaiting(offset: UInt64, count: Int, from payload: Payload) -> Bool {
        let start = DispatchTime.now().uptimeNanoseconds
        guard start >= inlineWritesPausedUntil.load(ordering: .relaxed) else { return false }
        let image: QCOW2Image? = mode.withLock { mode in
            guard case .plain(let image) = mode else { return nil }
            // Marked in the epoch the write lands in: this one, whose cut
            // waits for it (below) before it takes the dirty set's S0.
            markDirty(offset, UInt64(count))
            inFlight.register()
            return image
        }
        guard let image else { return false }
        inlineWriteHook?()
        var written = false
        payload { raw in
            precondition(raw.count == count, "a Payload must lend exactly the count given")
            written = (try? image.overwriteWithoutAllocating(raw, at: offset)) ?? false
        }
        inFlight.finish()
        guard written else { return false }
        inlineWrites.add(1, ordering: .relaxed)
        let end = DispatchTime.now().uptimeNanoseconds
        if end - start >= slowInlineWriteNs {
            inlineWritesPausedUntil.store(end + inlineWritePauseNs, ordering: .relaxed)
        }
        return true
    }

    private static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(seconds, 0)) * 1_000_000_000 + UInt64(max(attoseconds, 0) / 1_000_000_000)
    }

    private func check(_ offset: UInt64, _ length: UInt64) throws(DiskManagerError) {
        guard offset <= virtualSize, length <= virtualSize - offset else {
            throw .outOfRange(offset: offset, length: length, size: virtualSize)
        }
    }

    private func markDirty(_ offset: UInt64, _ length: UInt64) {
        guard length > 0 else { return }
        let first = Int(offset / clusterSize), last = Int((offset + length - 1) / clusterSize)
        dirty.withLock { set in for k in first...last { set.insert(k) } }
    }

    /// Routes one request to the integration, or to the plain image on the
    /// I/O thread. The caller's task resumes once it is done: one hand-off
    /// to the I/O thread and one back, nothing else (the NBD server runs
    /// the task on the connection's event loop).
    private func perform<Value: Sendable>(
        marking written: (offset: UInt64, length: UInt64)? = nil,
        integrating make: @escaping @Sendable (@escaping Integration.Completion) -> Integration.Work,
        fromIntegration convert: @escaping @Sendable ([UInt8]) -> Value,
        plain: @escaping @Sendable (QCOW2Image) throws(QCOW2Error) -> Value
    ) async throws(DiskManagerError) -> Value {
        let result: Result<Value, DiskManagerError> = await withCheckedContinuation { continuation in
            while true {
                // A plain request is queued under the mode lock, so a cut
                // (which takes the lock, then drains the queue) never lets
                // one reach T after S0 was frozen. A write is marked dirty
                // under the same lock, so it counts in the epoch it lands
                // in: before the cut's reset if queued for T (and so in
                // S0), after it if sent to the integration.
                let integrating: (Integration, QCOW2Image)? = mode.withLock { mode in
                    if let written { markDirty(written.offset, written.length) }
                    switch mode {
                    case .plain(let image):
                        io.submit {
                            do throws(QCOW2Error) {
                                continuation.resume(returning: .success(try plain(image)))
                            } catch {
                                continuation.resume(returning: .failure(.image(error)))
                            }
                        }
                        return nil
                    case .integrating(let integration, let next):
                        return (integration, next)
                    }
                }
                guard let pair = integrating else { return }
                let (integration, next) = pair
                if integration.submit(make({ continuation.resume(returning: $0.map(convert)) })) { return }
                if let failure = integration.failure {
                    // A failed integration leaves U incomplete: never serve from it.
                    continuation.resume(returning: .failure(failure))
                    return
                }
                // The integration is over: U is the plain image from now on.
                mode.withLock { mode in
                    if case .integrating(let running, _) = mode, running === integration { mode = .plain(next) }
                }
            }
        }
        return try result.get()
    }

    // MARK: - Checkpoints

    /// The cut at a checkpoint's switch-over: from now on requests go to an
    /// integration of T into `u`, which writes the switch-over content to
    /// `record`. `incremental`: the record holds only the clusters written
    /// since the previous cut (its backing must be the previous record);
    /// otherwise all of S0 (backing B). Call it while nothing writes the
    /// disk (guest paused, writes drained).
    ///
    /// It blocks on nothing: it switches the mode and returns. The
    /// integration's own thread then waits for the plain-mode I/O already
    /// queued for T and freezes S0 (T's clusters then) before it takes any
    /// request; requests sent meanwhile wait in its queue. So neither the
    /// caller (a task of the cooperative pool) nor an NBD event loop waits
    /// for the drain or for T's tables to be read, and the mode lock is
    /// held only for the switch.
    public func cut(u: QCOW2Image, record: QCOW2Image?, incremental: Bool) throws(DiskManagerError) -> Integration {
        try cut(u: u, record: record, incremental: incremental, hooks: Integration.Hooks())
    }

    func cut(u: QCOW2Image, record: QCOW2Image?, incremental: Bool, hooks: Integration.Hooks) throws(DiskManagerError) -> Integration {
        let integration: Integration = try mode.withLock { mode throws(DiskManagerError) in
            guard case .plain(let t) = mode else {
                throw .integrationFailed("a checkpoint is already integrating this disk")
            }
            // Plain-mode I/O already queued finishes on T before S0 is frozen
            // (the integration's thread drains the queue first), and so do
            // inline writes registered in flight (it waits for them too);
            // none can be queued or registered after this switch (both take
            // this lock and find integration mode).
            let written = dirty.withLock { set in
                defer { set = [] }
                return set
            }
            let integration = try Integration(
                layers: Layers(t: t, u: u, base: t.backing, record: record), recordClusters: incremental ? written : nil,
                hooks: hooks)
            mode = .integrating(integration, next: u)
            return integration
        }
        integration.start(after: { [io, inFlight] in
            io.drain()
            inFlight.waitUntilNone()
        })
        return integration
    }

    /// After `Integration.wait()`: plain mode on U (requests already switch
    /// lazily; this makes it immediate and drops the last reference to T).
    public func settle() {
        mode.withLock { mode in
            if case .integrating(let integration, let next) = mode, integration.isFinished, integration.failure == nil {
                mode = .plain(next)
            }
        }
    }
}

/// The inline writes of a disk in flight: each registers under the disk's
/// mode lock (in plain mode), does its pwrite without it, and finishes. A
/// cut switches the mode under that lock, so no write registers after it;
/// the integration's thread then waits here, off every event loop and the
/// cooperative pool, until the writes registered before the cut are done.
final class InlineWrites: Sendable {
    private struct State {
        var count = 0
        var waiter: DispatchSemaphore?
    }

    private let state = Mutex(State())

    func register() {
        state.withLock { $0.count += 1 }
    }

    func finish() {
        let waiter: DispatchSemaphore? = state.withLock { state in
            state.count -= 1
            guard state.count == 0 else { return nil }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.signal()
    }

    /// Inline writes registered and not finished (for tests).
    var count: Int { state.withLock { $0.count } }

    /// Returns once no inline write is in flight. Blocks: call it only where
    /// none can register any more (the disk is integrating), from a thread
    /// of its own (the integration's), and from one caller at a time.
    func waitUntilNone() {
        let waiter: DispatchSemaphore? = state.withLock { state in
            guard state.count > 0 else { return nil }
            let waiter = DispatchSemaphore(value: 0)
            state.waiter = waiter
            return waiter
        }
        waiter?.wait()
    }
}

/// One thread that runs jobs in the order they were submitted: a disk's
/// plain-mode I/O. It sleeps on a semaphore when it has nothing to do and
/// takes every queued job at once when woken; `stop()` ends it once the
/// jobs already submitted have run.
final class IOThread: Sendable {
    typealias Job = @Sendable () -> Void

    private struct State {
        var jobs: [Job] = []
        var sleeping = false
        var stopped = false
    }

    private let state = Mutex(State())
    /// Signalled once per sleep, by whoever ends it.
    private let wake = DispatchSemaphore(value: 0)

    init(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    func submit(_ job: @escaping Job) {
        let sleeping = state.withLock { state in
            state.jobs.append(job)
            defer { state.sleeping = false }
            return state.sleeping
        }
        if sleeping { wake.signal() }
    }

    /// Jobs submitted and not yet taken by the thread (for tests).
    var queuedJobs: Int { state.withLock { $0.jobs.count } }

    /// Returns once every job submitted before the call has run. Never call
    /// it from a job, an event loop or a task (it blocks: the integration's
    /// thread calls it).
    func drain() {
        let done = DispatchSemaphore(value: 0)
        submit { done.signal() }
        done.wait()
    }

    /// Ends the thread after the jobs already submitted (later ones never run).
    func stop() {
        let sleeping = state.withLock { state in
            state.stopped = true
            defer { state.sleeping = false }
            return state.sleeping
        }
        if sleeping { wake.signal() }
    }

    private func run() {
        var batch: [Job] = []
        while true {
            let next: Bool? = state.withLock { state in
                if !state.jobs.isEmpty {
                    swap(&batch, &state.jobs)
                    return true
                }
                if state.stopped { return false }
                state.sleeping = true
                return nil
            }
            switch next {
            case true?:
                for job in batch { job() }
                batch.removeAll(keepingCapacity: true)
            case false?:
                return
            case nil:
                wake.wait()
            }
        }
    }
}
