import NBDProtocol
import Synchronization

/// The requests of one connection that are in flight: bounds how many (and
/// how many bytes of the disk they cover) run at once, and orders flushes
/// after writes.
///
/// Only the connection's reader calls `admit`, so at most one task waits for
/// room; while it waits it reads no more from the socket, which is the
/// backpressure. Every admitted request calls `finish` exactly once.
final class RequestWindow: Sendable {
    private struct State {
        var count = 0
        var bytes = 0
        var nextSequence: UInt64 = 0
        /// Sequence numbers of admitted writes (WRITE, TRIM, WRITE_ZEROES) not yet finished.
        var writes: Set<UInt64> = []
        var admitWaiter: (cost: Int, continuation: CheckedContinuation<Void, Never>)?
        var flushWaiters: [(sequence: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
    }

    let maximumCount: Int
    let maximumBytes: Int
    private let state = Mutex(State())

    init(maximumCount: Int, maximumBytes: Int) {
        self.maximumCount = max(1, maximumCount)
        self.maximumBytes = max(1, maximumBytes)
    }

    /// Requests admitted and not yet finished.
    var inFlight: Int { state.withLock { $0.count } }

    /// True while the reader waits in `admit` for room.
    var isHoldingARequest: Bool { state.withLock { $0.admitWaiter != nil } }

    /// What a request counts against the byte budget: the length of disk it
    /// covers. For READ and WRITE that is the memory it holds (the reply or
    /// the payload); WRITE_ZEROES and TRIM carry no payload but up to 4 GiB
    /// of work each, so they count their length too: the budget then bounds
    /// the zeroing in flight, and one larger than the budget runs alone
    /// (the connection reads nothing more until it is done).
    static func cost(of verdict: NBDVerdict) -> Int {
        switch verdict {
        case .perform(.read(_, let length)), .perform(.write(_, let length, _)),
            .perform(.writeZeroes(_, let length, _, _)), .perform(.trim(_, let length, _)):
            length
        default: 0
        }
    }

    /// A ticket for one admitted request.
    struct Ticket: Sendable {
        let sequence: UInt64
        let cost: Int
        let isWrite: Bool
    }

    /// Waits until the request fits (a request larger than the byte budget is
    /// admitted alone), then admits it.
    func admit(cost: Int, isWrite: Bool) async -> Ticket {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let admitted = state.withLock { state in
                if Self.fits(cost, state, maximumCount, maximumBytes) {
                    state.count += 1
                    state.bytes += cost
                    return true
                }
                state.admitWaiter = (cost, continuation)
                return false
            }
            if admitted { continuation.resume() }
        }
        return state.withLock { state in
            defer { state.nextSequence += 1 }
            if isWrite { state.writes.insert(state.nextSequence) }
            return Ticket(sequence: state.nextSequence, cost: cost, isWrite: isWrite)
        }
    }

    private static func fits(_ cost: Int, _ state: State, _ maximumCount: Int, _ maximumBytes: Int) -> Bool {
        state.count == 0 || (state.count < maximumCount && state.bytes + cost <= maximumBytes)
    }

    /// Releases the ticket's room and wakes the reader or flushes it held up.
    func finish(_ ticket: Ticket) {
        var resume: [CheckedContinuation<Void, Never>] = []
        state.withLock { state in
            state.count -= 1
            state.bytes -= ticket.cost
            if ticket.isWrite { state.writes.remove(ticket.sequence) }
            if let waiter = state.admitWaiter, Self.fits(waiter.cost, state, maximumCount, maximumBytes) {
                state.count += 1
                state.bytes += waiter.cost
                state.admitWaiter = nil
                resume.append(waiter.continuation)
            }
            let oldestWrite = state.writes.min() ?? .max
            state.flushWaiters.removeAll { waiter in
                guard oldestWrite > waiter.sequence else { return false }
                resume.append(waiter.continuation)
                return true
            }
        }
        for continuation in resume { continuation.resume() }
    }

    /// Waits until every write admitted before `ticket` has finished (the
    /// FLUSH barrier: those include every write already answered).
    func writesFinished(before ticket: Ticket) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state in
                if (state.writes.min() ?? .max) > ticket.sequence { return true }
                state.flushWaiters.append((ticket.sequence, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }
}

/// A one-shot signal: `fire()` once, `wait()` from any number of tasks.
/// A waiting task that is cancelled stops waiting.
final class Completion: Sendable {
    private struct State {
        var fired = false
        var nextID = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    var isFired: Bool { state.withLock { $0.fired } }

    func fire() {
        let waiters = state.withLock { state in
            state.fired = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let done = state.withLock { state in
                    if state.fired || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if done { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }

    /// Waits at most `timeout`; true when the signal fired.
    func wait(timeout: Duration) async -> Bool {
        if isFired { return true }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.wait() }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
        return isFired
    }
}
