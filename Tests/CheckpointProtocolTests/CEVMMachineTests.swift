import CheckpointProtocol
import Testing

/// The CEVM phase machine driven by fake events: the success path, then
/// every failure in every phase (a table), without QEMU.
@Suite struct CEVMMachineTests {
    typealias M = CEVMMachine
    static let limits = M.Limits(streamBytes: 100, onLimit: .forceSwitchOver, backstopBytes: 1000)

    /// The events of a checkpoint that succeeds, each with the actions it must produce.
    static let successPath: [(M.Event, [M.Action])] = [
        (.start, [.prepare]),
        (.prepared, [.startMigration]),
        (.migrationStarted, []),
        (.streamProgress(50), []),
        (.sourceCompleted, [.cutDisk]),
        (.diskCut, [.resumeNew]),
        (.newResumed, [.adoptNew]),
        (.adopted, [.stopOld, .finishMemory, .finishDisk]),
        (.memoryDurable, []),
        (.oldEnded, []),
        (.diskDurable, [.commit]),
        (.committed, []),
    ]

    /// A machine that has taken the first `steps` events of the success path.
    static func machine(after steps: Int, limits: M.Limits = limits) -> M {
        var machine = M(limits: limits)
        for (event, _) in successPath.prefix(steps) { _ = machine.handle(event) }
        return machine
    }

    @Test func theSuccessPathCommits() {
        var machine = M(limits: Self.limits)
        for (event, expected) in Self.successPath {
            let actions = machine.handle(event)
            #expect(actions == expected, "\(event) while \(machine.phase.name)")
        }
        #expect(machine.phase == .committed(newLost: false))
    }

    @Test func theDrainMayCompleteInAnyOrder() {
        let endings: [M.Event] = [.oldEnded, .memoryDurable, .diskDurable]
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            var machine = Self.machine(after: 8)
            var last: [M.Action] = []
            for index in order { last = machine.handle(endings[index]) }
            #expect(last == [.commit], "\(order)")
            #expect(machine.phase == .committing(newLost: false))
        }
    }

    /// The phases of the success path, by the number of events taken to reach them.
    static let phases: [(steps: Int, name: String, beforeSwitchOver: Bool, cutMade: Bool)] = [
        (1, "preparing", true, false),
        (3, "migrating", true, false),
        (5, "switching over (cuttingDisk)", true, false),
        (6, "switching over (resumingNew)", true, true),
        (7, "adopting New_VM", false, true),
        (9, "draining", false, true),
        (11, "committing", false, true),
    ]

    /// Every failure that can reach a running checkpoint.
    static let failures: [M.Event] =
        M.Part.allCases.map { M.Event.failed($0, "boom") } + [
            .exited(.newVM), .exited(.oldVM), .timedOut, .cancelled("stop requested"),
        ]

    @Test(arguments: phases.indices)
    func everyFailureInEveryPhaseHasItsOutcome(_ index: Int) {
        let phase = Self.phases[index]
        for failure in Self.failures {
            var machine = Self.machine(after: phase.steps)
            #expect(machine.phase.name == phase.name)
            let actions = machine.handle(failure)
            let context: Comment = "\(failure) while \(phase.name)"

            // Events that change nothing in this phase.
            let oldEndsAfterStream = failure == .exited(.oldVM) && !phase.beforeSwitchOver
            let oldEndsAfterSource = failure == .exited(.oldVM) && phase.name.hasPrefix("switching over")
            let timerAfterStream = failure == .timedOut && (phase.name.hasPrefix("switching") || !phase.beforeSwitchOver)
            let newLostWhileDraining = failure == .exited(.newVM) && (phase.name == "draining" || phase.name == "committing")
            if oldEndsAfterStream || oldEndsAfterSource || timerAfterStream {
                #expect(!machine.phase.isTerminal, "\(failure): harmless")
                #expect(actions.isEmpty || actions == [.commit], "\(failure): \(actions)")
                continue
            }
            if newLostWhileDraining {
                // The record still commits; the VM is lost with New_VM.
                #expect(!machine.phase.isTerminal, context)
                var rest = machine
                for (event, _) in Self.successPath.dropFirst(phase.steps) { _ = rest.handle(event) }
                #expect(rest.phase == .committed(newLost: true), context)
                continue
            }

            guard case .failed(let outcome) = machine.phase else {
                Issue.record("\(failure): no failure (\(machine.phase.name))")
                continue
            }
            #expect(outcome.phase == phase.name, context)
            // The partial record always goes, the disk is always released.
            #expect(actions.last == .discardRecord, context)
            #expect(actions.contains(.releaseDisk(cutMade: phase.cutMade)), context)
            #expect(actions.contains(.abortTee), context)
            if phase.beforeSwitchOver {
                // Before the switch-over: cancel, Old_VM runs on (unless it died), New_VM goes.
                #expect(actions.first == .cancelMigration, context)
                #expect(actions.contains(.stopNew), context)
                #expect(!actions.contains(.stopOld), context)
                if failure == .exited(.oldVM) {
                    #expect(outcome.outcome == .vmLost, context)
                    #expect(!actions.contains(.resumeOld), context)
                } else {
                    #expect(outcome.outcome == .oldRunsOn, context)
                    #expect(actions.contains(.resumeOld), context)
                }
            } else {
                // After it: New_VM runs on (or died, when it is the failure), nothing is cancelled or resumed.
                #expect(!actions.contains(.cancelMigration) && !actions.contains(.resumeOld) && !actions.contains(.stopNew), context)
                #expect(outcome.outcome == (failure == .exited(.newVM) ? .vmLost : .newRunsOn), context)
            }
            // A failed machine ignores whatever comes after.
            #expect(machine.handle(.committed).isEmpty && machine.handle(.sourceCompleted).isEmpty, context)
        }
    }

    @Test func aStreamPastItsLimitForcesTheSwitchOverOnce() {
        var machine = Self.machine(after: 3)
        #expect(machine.handle(.streamProgress(100)).isEmpty, "at the limit: not past it")
        #expect(machine.handle(.streamProgress(101)) == [.forceSwitchOver(atBytes: 101)])
        #expect(machine.phase == .migrating(forcedAt: 101))
        #expect(machine.handle(.streamProgress(500)).isEmpty, "forced once")
        #expect(machine.handle(.sourceCompleted) == [.cutDisk])
    }

    @Test func aForcedSwitchOverThatNeverComesIsGivenUp() {
        var machine = Self.machine(after: 3)
        _ = machine.handle(.streamProgress(101))
        let actions = machine.handle(.streamProgress(1001))
        guard case .failed(let failure) = machine.phase else {
            Issue.record("not failed: \(machine.phase.name)")
            return
        }
        #expect(failure.reason == .streamLimit(bytes: 1001, limit: 1000, forced: true))
        #expect(failure.outcome == .oldRunsOn)
        #expect(actions.prefix(3) == [.cancelMigration, .resumeOld, .stopNew])
        #expect("\(failure)".contains("after its switch-over was forced"))
    }

    @Test func aStreamPastItsLimitIsCancelledOnRequest() {
        var limits = Self.limits
        limits.onLimit = .cancel
        var machine = Self.machine(after: 3, limits: limits)
        let actions = machine.handle(.streamProgress(101))
        guard case .failed(let failure) = machine.phase else {
            Issue.record("not failed: \(machine.phase.name)")
            return
        }
        #expect(failure.reason == .streamLimit(bytes: 101, limit: 100, forced: false))
        #expect(actions.first == .cancelMigration)
        #expect("\(failure)".contains("--max-stream"))
    }

    @Test func eventsOutOfOrderFailInsteadOfBeingTrusted() {
        var machine = Self.machine(after: 1)
        let actions = machine.handle(.diskCut)
        guard case .failed(let failure) = machine.phase else {
            Issue.record("not failed: \(machine.phase.name)")
            return
        }
        #expect(failure.outcome == .oldRunsOn)
        #expect(actions.contains(.resumeOld))
    }
}
