import CheckpointProtocol

/// What a driver needs from one checkpoint's resources: how to carry out
/// each action of its machine, which watches to start along with an
/// action, how to undo, and the fault-injection hook.
protocol CheckpointRun: Sendable {
    associatedtype Machine: PhaseMachine

    /// Carries out `action`; returns the event that reports its end (nil
    /// for an action with none).
    func perform(_ action: Machine.Action) async -> Machine.Event?
    /// The watches to start once `action` has been started (nil: at the
    /// start), each reporting its events through `report`; they run until
    /// the checkpoint ends.
    func watches(startedWith action: Machine.Action?, report: @escaping @Sendable (Machine.Event) -> Void)
        -> [@Sendable () async -> Void]
    /// Undoes one thing after a failure: best effort, bounded in time.
    func undo(_ action: Machine.Action) async
    /// Called with each event before the machine takes it.
    func observe(_ event: Machine.Event)
}

/// Runs `machine` to a terminal phase: each action and each watch is a
/// child of one task group that reports back through one stream; the
/// machine takes the events one at a time. When it is terminal the group is
/// cancelled (no wait outlives the checkpoint) and, after a failure, the
/// undo actions it returned are carried out in order.
func drive<Run: CheckpointRun>(_ machine: inout Run.Machine, _ run: Run) async {
    let (events, reports) = AsyncStream.makeStream(of: Run.Machine.Event.self)
    let report: @Sendable (Run.Machine.Event) -> Void = { reports.yield($0) }
    var undo: [Run.Machine.Action] = []
    await withTaskGroup(of: Void.self) { group in
        for watch in run.watches(startedWith: nil, report: report) { group.addTask(operation: watch) }
        var iterator = events.makeAsyncIterator()
        var actions = machine.handle(Run.Machine.start)
        while !machine.isTerminal {
            for action in actions {
                group.addTask { if let event = await run.perform(action) { report(event) } }
                for watch in run.watches(startedWith: action, report: report) { group.addTask(operation: watch) }
            }
            let event = await iterator.next() ?? Run.Machine.cancel("the checkpoint's task was cancelled")
            run.observe(event)
            actions = machine.handle(event)
        }
        undo = actions
        group.cancelAll()
    }
    reports.finish()
    if machine.failure != nil {
        for action in undo { await run.undo(action) }
    }
}

extension CheckpointRun {
    /// The watch that reports `event` once `process`-like `ended` returns
    /// true (it ended and was not asked to).
    static func exitWatch(
        _ exited: @escaping @Sendable () async -> Bool, report: @escaping @Sendable (Machine.Event) -> Void, event: Machine.Event
    ) -> @Sendable () async -> Void {
        { if await exited() { report(event) } }
    }

    /// The migration timer: `event` after `timeout`, unless cancelled first.
    static func timer(
        _ timeout: Duration, report: @escaping @Sendable (Machine.Event) -> Void, event: Machine.Event
    ) -> @Sendable () async -> Void {
        {
            do {
                try await Task.sleep(for: timeout)
                report(event)
            } catch {}
        }
    }
}
