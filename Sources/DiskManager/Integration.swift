import CEVMSystem
import DiskIntegration
import Dispatch
import Foundation
import QCOW2
import Synchronization

/// One run of the seed's Checkpointing protocol and AccessDisk over real
/// qcow2 images: T is swept into U while New_VM's requests are served, and
/// the switch-over content of T (S0) is written to the disk record R.
///
/// The two state machines (`OldSide`, `NewSide`) are driven by one thread of
/// this object, which carries out their actions in order: the machines stay
/// pure, all I/O is here. Requests from any thread are queued to it; the
/// thread serves every queued request before each sweep step, so the guest
/// is never starved by the sweep. The run ends when New_VM's side reaches
/// plain mode on U; `wait()` returns then, with every action carried out and
/// U and R flushed.
public final class Integration: Sendable {
    public struct Stats: Sendable, Equatable {
        /// |S0|: clusters T held at switch-over.
        public var switchOverClusters: Int
        /// Clusters the sweep copied from T into U.
        public var sweptClusters: Int
        /// Clusters written to the record.
        public var recordClusters: Int
        /// Guest requests served while integrating.
        public var guestRequests: Int
        /// Seconds from start to UPDATE_DONE (U and R flushed).
        public var seconds: Double
    }

    public typealias Completion = @Sendable (Result<[UInt8], DiskManagerError>) -> Void

    enum Work {
        case read(offset: Int, length: Int, Completion)
        case write(offset: Int, bytes: [UInt8], Completion)
        case writeZeroes(offset: Int, length: Int, Completion)
        case flush(Completion)
    }

    /// Test hooks: `lockstep` serves each request as it arrives, then
    /// takes one sweep step, and none while no request comes (so tests can
    /// place a crash anywhere in the sweep);
    /// `sweepHold` stops the sweep once its cursor reached a cluster, while
    /// requests go on being served, until the test releases it.
    struct Hooks: Sendable {
        var lockstep = false
        var sweepHold: SweepHold?
    }

    /// Holds the sweep at `cluster` (the cursor at or past it) until `release()`.
    final class SweepHold: Sendable {
        let cluster: Int
        private let state = Mutex((reached: false, released: false))

        init(atCluster cluster: Int) { self.cluster = cluster }

        /// True once the sweep stopped here.
        var isReached: Bool { state.withLock { $0.reached } }
        func release() { state.withLock { $0.released = true } }

        /// Called by the worker: true while the sweep must not step.
        func holds(cursor: Int?, drained: Bool) -> Bool {
            guard !drained, let cursor, cursor >= cluster else { return false }
            return state.withLock { s in
                if s.released { return false }
                s.reached = true
                return true
            }
        }
    }

    struct Queue {
        /// Test hook: the worker stops dead at its next turn, as if killed.
        var halt = false
        var halted = false
        var work: [Work] = []
        /// Set by the worker once New_VM's side is plain and the queue empty:
        /// submissions are refused from then on and go to U directly.
        var closed = false
        var result: Result<Stats, DiskManagerError>?
        var waiters: [@Sendable (Result<Stats, DiskManagerError>) -> Void] = []
    }

    public let layers: Layers
    public let geometry: Geometry
    /// S0, once the worker froze it (nil before).
    public var switchOverClusters: Set<Int>? { frozen.withLock { $0 } }
    private let frozen = Mutex<Set<Int>?>(nil)
    /// The S0 clusters the record must hold: all of S0 for a record over B,
    /// S0 ∩ (clusters written this epoch) for one over the previous record.
    let recordFilter: Set<Int>?
    let queue = Mutex(Queue())
    let worker = Mutex<pid_t?>(nil)

    /// The worker thread's kernel id once it runs (to pin it elsewhere).
    public var threadID: pid_t? { worker.withLock { $0 } }
    let hooks: Hooks

    /// Checks that the images fit together; reads nothing. S0 = the
    /// clusters T holds is frozen by the worker when it starts, before it
    /// takes any request: create and start the integration at switch-over,
    /// when nothing writes T any more except what is already queued for it
    /// (`start(after:)` waits for that), and send every request from then
    /// on to `submit`.
    /// `recordClusters`: nil = the record gets all of S0 (its backing is B);
    /// otherwise only these clusters of S0 (its backing is the previous record).
    public convenience init(layers: Layers, recordClusters: Set<Int>?) throws(DiskManagerError) {
        try self.init(layers: layers, recordClusters: recordClusters, hooks: Hooks())
    }

    init(layers: Layers, recordClusters: Set<Int>?, hooks: Hooks) throws(DiskManagerError) {
        self.hooks = hooks
        guard layers.t.virtualSize == layers.u.virtualSize, layers.t.clusterSize == layers.u.clusterSize else {
            throw .mismatch("T is \(layers.t.virtualSize) bytes in \(layers.t.clusterSize)-byte clusters, U \(layers.u.virtualSize) in \(layers.u.clusterSize)")
        }
        if let r = layers.record, r.virtualSize != layers.t.virtualSize {
            throw .mismatch("the record is \(r.virtualSize) bytes, T \(layers.t.virtualSize)")
        }
        let clusterSize = Int(layers.t.clusterSize)
        let count = Int((layers.t.virtualSize + UInt64(clusterSize) - 1) / UInt64(clusterSize))
        do throws(DiskIntegrationError) {
            geometry = try Geometry(clusterSize: clusterSize, clusterCount: max(count, 1))
        } catch {
            throw .protocolViolation(error)
        }
        self.layers = layers
        self.recordFilter = recordClusters
    }

    /// Starts the worker thread.
    public func start() {
        start(after: {})
    }

    /// Starts the worker thread, which first runs `settle` (the disk's wait
    /// for plain-mode I/O already queued for T: a blocking wait, done on
    /// the worker's own thread, so the caller, an event loop or a task of
    /// the cooperative pool, never waits for it), then freezes S0.
    func start(after settle: @escaping @Sendable () -> Void) {
        let thread = Thread { [self] in run(after: settle) }
        thread.name = "cevm-integration"
        thread.start()
    }

    /// S0: the clusters T holds now, read from its live tables.
    private func freezeSwitchOver() throws(DiskManagerError) -> OldSide {
        var s0 = Set<Int>()
        var next: UInt64 = 0
        do throws(QCOW2Error) {
            while let k = try layers.t.nextAllocatedCluster(atOrAfter: next) {
                s0.insert(Int(k))
                next = k + 1
            }
        } catch {
            throw .image(error)
        }
        let old: OldSide
        do throws(DiskIntegrationError) {
            old = try OldSide(geometry: geometry, switchOverClusters: s0)
        } catch {
            throw .protocolViolation(error)
        }
        frozen.withLock { $0 = s0 }
        return old
    }

    /// Test hook: stops the worker as a kill would (no flush, requests in
    /// flight never answered) and returns once it stopped.
    func halt() async {
        queue.withLock { $0.halt = true }
        while !queue.withLock({ $0.halted || $0.result != nil }) {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    /// True once the run ended (successfully or not).
    public var isFinished: Bool { queue.withLock { $0.result != nil } }

    /// The error the run ended with, if it failed.
    public var failure: DiskManagerError? {
        queue.withLock { q in
            if case .failure(let error) = q.result { return error }
            return nil
        }
    }

    // MARK: - Requests (any thread)

    /// Queues a request; false when the integration is over (serve it from U).
    func submit(_ work: Work) -> Bool {
        let accepted = queue.withLock { q in
            if q.closed { return false }
            q.work.append(work)
            return true
        }
        return accepted
    }

    /// Waits until the integration ended (U holds everything, R written and flushed).
    public func wait() async throws(DiskManagerError) -> Stats {
        let result: Result<Stats, DiskManagerError> = await withCheckedContinuation { continuation in
            let ready = queue.withLock { q -> Result<Stats, DiskManagerError>? in
                if let result = q.result { return result }
                q.waiters.append { continuation.resume(returning: $0) }
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
        return try result.get()
    }

    // MARK: - The worker

    struct Pending {
        var buffer: [UInt8]
        var payload: [UInt8]
        /// A write of zeros (write-zeroes): no payload, the layer zeroes the span.
        var zeroes = false
        let completion: Completion
    }

    private func run(after settle: @Sendable () -> Void) {
        worker.withLock { $0 = Affinity.currentThreadID() }
        let started = DispatchTime.now().uptimeNanoseconds
        var driver: Driver
        do throws(DiskManagerError) {
            // Requests submitted meanwhile wait in the queue: none is taken
            // before S0 is frozen.
            settle()
            driver = Driver(layers: layers, geometry: geometry, old: try freezeSwitchOver(), recordFilter: recordFilter)
        } catch {
            conclude(.failure(error))
            return
        }
        var outcome: Result<Stats, DiskManagerError>
        do throws(DiskManagerError) {
            while true {
                let batch: [Work]? = queue.withLock { q in
                    if q.halt {
                        q.halted = true
                        return nil
                    }
                    let taken = q.work
                    q.work.removeAll(keepingCapacity: true)
                    if taken.isEmpty && driver.isPlain && !driver.hasMessagesForOldSide {
                        q.closed = true
                        return nil
                    }
                    return taken
                }
                guard let batch else {
                    if queue.withLock({ $0.halted }) { return }  // killed: nothing more happens, not even a flush
                    break
                }
                for work in batch { try driver.accept(work) }
                if hooks.lockstep {
                    if batch.isEmpty && !driver.hasMessagesForOldSide && !driver.isPlain {
                        usleep(200)
                        continue
                    }
                    // The requests first, so the step below is a sweep step.
                    while driver.hasMessagesForOldSide { _ = try driver.step() }
                }
                if let hold = hooks.sweepHold, !driver.hasMessagesForOldSide,
                    hold.holds(cursor: driver.old.cursor, drained: driver.old.eofOnT)
                {
                    usleep(200)
                    continue
                }
                if try driver.step() == false && batch.isEmpty && !driver.isPlain {
                    // Every request completes within the step that serves
                    // it, so a drained old side with New_VM's side not plain
                    // means the machines disagree: fail rather than hang.
                    throw DiskManagerError.integrationFailed("stalled before UPDATE_DONE (old side \(driver.old.state), new side \(driver.new.state))")
                }
            }
            try driver.finish()
            var stats = driver.stats
            stats.seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            outcome = .success(stats)
        } catch {
            driver.failAll(error)
            outcome = .failure(error)
        }
        conclude(outcome)
    }

    /// Publishes the run's outcome; after a failure, requests still queued
    /// (and any that arrive later) fail with it.
    private func conclude(_ outcome: Result<Stats, DiskManagerError>) {
        // Closed and the outcome set at once: a request refused from here
        // on finds the failure, never an integration closed with no outcome
        // (which would send it to U).
        let (late, waiters) = queue.withLock { q in
            q.closed = true
            q.result = outcome
            defer {
                q.work = []
                q.waiters = []
            }
            return (q.work, q.waiters)
        }
        if case .failure(let error) = outcome {
            for work in late { Driver.fail(work, with: error) }
        }
        for waiter in waiters { waiter(outcome) }
    }
}

/// The single-threaded part: the two machines and the I/O that carries out
/// their actions.
struct Driver {
    let layers: Layers
    let geometry: Geometry
    let recordFilter: Set<Int>?
    var old: OldSide
    var new: NewSide
    let query: LiveAllocation
    var forOldSide: [NewToOld] = []
    var forOldSideHead = 0
    var pending: [RequestID: Integration.Pending] = [:]
    var nextID: UInt64 = 1
    var stats: Integration.Stats
    var scratch: [UInt8]

    init(layers: Layers, geometry: Geometry, old: OldSide, recordFilter: Set<Int>?) {
        self.layers = layers
        self.geometry = geometry
        self.recordFilter = recordFilter
        self.old = old
        self.new = NewSide(geometry: geometry)
        self.query = LiveAllocation(layers: layers)
        self.stats = Integration.Stats(
            switchOverClusters: old.switchOverClusters.count, sweptClusters: 0, recordClusters: 0, guestRequests: 0, seconds: 0)
        self.scratch = [UInt8](repeating: 0, count: geometry.clusterSize)
    }

    var isPlain: Bool { new.state == .plain }
    var hasMessagesForOldSide: Bool { forOldSideHead < forOldSide.count }

    /// One unit of protocol work: a message to the old side if one waits,
    /// else a sweep step. False when there was nothing to do.
    mutating func step() throws(DiskManagerError) -> Bool {
        if hasMessagesForOldSide {
            let message = forOldSide[forOldSideHead]
            forOldSideHead += 1
            if forOldSideHead == forOldSide.count {
                forOldSide.removeAll(keepingCapacity: true)
                forOldSideHead = 0
            }
            try carryOut(try Self.machine(query) { () throws(DiskIntegrationError) in try old.receive(message, query) })
            return true
        }
        if !old.eofOnT {
            let before = old.cursor
            try carryOut(try Self.machine(query) { () throws(DiskIntegrationError) in try old.sweepStep(query) })
            if old.cursor != before, old.cursor != nil { stats.sweptClusters += 1 }
            return true
        }
        return false
    }

    mutating func accept(_ work: Integration.Work) throws(DiskManagerError) {
        let id = RequestID(nextID)
        nextID += 1
        let request: DiskRequest
        switch work {
        case .flush(let completion):
            // Every write completed so far is in T or U: make both durable.
            do throws(QCOW2Error) {
                try layers.t.flush()
                try layers.u.flush()
                completion(.success([]))
            } catch {
                completion(.failure(.image(error)))
            }
            return
        case .read(let offset, let length, let completion):
            request = DiskRequest(id: id, kind: .read, offset: offset, length: length)
            pending[id] = .init(buffer: [UInt8](repeating: 0, count: length), payload: [], completion: completion)
        case .write(let offset, let bytes, let completion):
            request = DiskRequest(id: id, kind: .write, offset: offset, length: bytes.count)
            pending[id] = .init(buffer: [], payload: bytes, completion: completion)
        case .writeZeroes(let offset, let length, let completion):
            // The protocol knows reads and writes: zeroes are a write of
            // zeros, every span of which the layer zeroes itself (a zero
            // cluster when whole), so no payload of zeros is made.
            request = DiskRequest(id: id, kind: .write, offset: offset, length: length)
            pending[id] = .init(buffer: [], payload: [], zeroes: true, completion: completion)
        }
        guard UInt64(request.offset) + UInt64(request.length) <= layers.virtualSize else {
            pending.removeValue(forKey: id)?.completion(
                .failure(.outOfRange(offset: UInt64(request.offset), length: UInt64(request.length), size: layers.virtualSize)))
            return
        }
        stats.guestRequests += 1
        try carryOut(try Self.machine(query) { () throws(DiskIntegrationError) in try new.submit(request, query) })
    }

    /// Runs a machine input and checks the allocation queries it made.
    private static func machine(
        _ query: LiveAllocation, _ body: () throws(DiskIntegrationError) -> [IntegrationAction]
    ) throws(DiskManagerError) -> [IntegrationAction] {
        let actions: [IntegrationAction]
        do throws(DiskIntegrationError) { actions = try body() } catch { throw .protocolViolation(error) }
        if let failure = query.failure { throw .image(failure) }
        return actions
    }

    mutating func carryOut(_ actions: [IntegrationAction]) throws(DiskManagerError) {
        for action in actions {
            switch action {
            case .copyCluster(let from, let to, let cluster):
                let (offset, count) = layers.extent(ofCluster: cluster)
                // A zero cluster (a write-zeroes) is copied as one: no data.
                if try layers.isZeroCluster(from, cluster) {
                    try layers.writeZeroes(to, at: offset, count: count)
                    continue
                }
                try layers.read(from, into: &scratch, 0..<count, at: offset)
                try layers.write(to, scratch, 0..<count, at: offset)
            case .saveToRecord(let cluster, let from):
                guard let record = layers.record, recordFilter?.contains(cluster) ?? true else { continue }
                let (offset, count) = layers.extent(ofCluster: cluster)
                stats.recordClusters += 1
                if try layers.isZeroCluster(from, cluster) {
                    try Layers.writeZeroes(record, at: offset, count: count)
                    continue
                }
                try layers.read(from, into: &scratch, 0..<count, at: offset)
                try Layers.write(record, scratch, 0..<count, at: offset)
            case .read(let from, let span, let id):
                guard var entry = pending.removeValue(forKey: id) else { continue }
                defer { pending[id] = entry }
                let offset = UInt64(span.cluster * geometry.clusterSize + span.range.lowerBound)
                try layers.read(from, into: &entry.buffer, span.requestRange, at: offset)
            case .write(let to, let span, let id):
                guard let entry = pending[id] else { continue }
                let offset = UInt64(span.cluster * geometry.clusterSize + span.range.lowerBound)
                if entry.zeroes {
                    try layers.writeZeroes(to, at: offset, count: span.range.count)
                } else {
                    try layers.write(to, entry.payload, span.requestRange, at: offset)
                }
            case .sendToNewSide(let message):
                try carryOut(try Self.machine(query) { () throws(DiskIntegrationError) in try new.receive(message, query) })
            case .sendToOldSide(let message):
                forOldSide.append(message)
            case .complete(let id):
                if let entry = pending.removeValue(forKey: id) { entry.completion(.success(entry.buffer)) }
            }
        }
    }

    /// UPDATE_DONE reached: make U and R durable.
    mutating func finish() throws(DiskManagerError) {
        do throws(QCOW2Error) {
            try layers.u.flush()
            try layers.record?.flush()
        } catch {
            throw .image(error)
        }
    }

    mutating func failAll(_ error: DiskManagerError) {
        for (_, entry) in pending { entry.completion(.failure(error)) }
        pending = [:]
    }

    static func fail(_ work: Integration.Work, with error: DiskManagerError) {
        switch work {
        case .read(_, _, let c), .write(_, _, let c), .writeZeroes(_, _, let c), .flush(let c): c(.failure(error))
        }
    }
}
