import Synchronization

/// A value set once and awaited by any number of tasks. A waiter whose task
/// is cancelled stops waiting at once (its continuation is resumed and
/// forgotten), so a wait never outlives the task group that started it.
public final class Latch<Value: Sendable>: Sendable {
    private enum Waiter {
        case cancellable(CheckedContinuation<Value?, Never>)
        case certain(CheckedContinuation<Value, Never>)

        func resume(_ value: Value) {
            switch self {
            case .cancellable(let continuation): continuation.resume(returning: value)
            case .certain(let continuation): continuation.resume(returning: value)
            }
        }
    }

    private struct State {
        var value: Value?
        var waiters: [UInt64: Waiter] = [:]
        var nextWaiter: UInt64 = 0

        mutating func add(_ waiter: Waiter, id: UInt64? = nil) {
            if let id {
                waiters[id] = waiter
            } else {
                nextWaiter += 1
                waiters[nextWaiter] = waiter
            }
        }
    }

    private let state = Mutex(State())

    public init() {}

    /// The value, once set.
    public var value: Value? { state.withLock { $0.value } }

    /// Sets the value and wakes every waiter; true for the one call that
    /// set it (later calls change nothing).
    @discardableResult
    public func set(_ value: Value) -> Bool {
        let waiters = state.withLock { state -> [Waiter]? in
            guard state.value == nil else { return nil }
            state.value = value
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        guard let waiters else { return false }
        for waiter in waiters { waiter.resume(value) }
        return true
    }

    /// The value once set; nil when the calling task is cancelled first.
    public func wait() async -> Value? {
        let id = state.withLock { state -> UInt64 in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Value?, Never>) in
                let now = state.withLock { state -> Value?? in
                    if let value = state.value { return .some(value) }
                    if Task.isCancelled { return .some(nil) }
                    state.add(.cancellable(continuation), id: id)
                    return .none
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            if case .cancellable(let continuation) = waiter { continuation.resume(returning: nil) }
        }
    }

    /// The value once set, whether or not the calling task is cancelled:
    /// only for a value that is sure to come (a process already sent SIGKILL).
    public func waitIgnoringCancellation() async -> Value {
        await withCheckedContinuation { (continuation: CheckedContinuation<Value, Never>) in
            let now = state.withLock { state -> Value? in
                if let value = state.value { return value }
                state.add(.certain(continuation))
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }
}

/// Runs `operations` as the children of one task group: the first to finish
/// gives the result, the others are cancelled and awaited before this
/// returns (so each must end promptly when cancelled: sleeps, `Latch`
/// waits and the process waits of this module do).
public func firstFinished<T: Sendable>(_ operations: [@Sendable () async -> T]) async -> T? {
    await withTaskGroup(of: T.self) { group in
        for operation in operations { group.addTask(operation: operation) }
        defer { group.cancelAll() }
        return await group.next()
    }
}
