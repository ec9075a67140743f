import CheckpointProtocol
import Testing

/// Stop-and-save and background-snapshot as phase machines: each success
/// path, and every failure in every phase with its outcome and undo.
@Suite struct SnapshotMachineTests {
    typealias M = SnapshotMachine

    static let paths: [M.Kind: [(M.Event, [M.Action])]] = [
        .stopAndSave: [
            (.start, [.prepare]),
            (.prepared, [.pause]),
            (.paused, [.startMigration]),
            (.migrationStarted, []),
            (.sourceCompleted, [.cutDisk]),
            (.diskCut, [.resume]),
            (.resumed, [.finishMemory]),
            (.memoryDurable, [.finishDisk]),
            (.diskDurable, [.commit]),
            (.committed, []),
        ],
        .backgroundSnapshot: [
            (.start, [.prepare]),
            (.prepared, [.pause]),
            (.paused, [.cutDisk]),
            (.diskCut, [.startMigration]),
            (.migrationStarted, [.awaitSetup]),
            (.setupDone, [.resume]),
            (.resumed, []),
            (.sourceCompleted, [.finishMemory]),
            (.memoryDurable, [.finishDisk]),
            (.diskDurable, [.commit]),
            (.committed, []),
        ],
    ]

    @Test(arguments: [M.Kind.stopAndSave, .backgroundSnapshot])
    func theSuccessPathCommits(kind: M.Kind) {
        var machine = M(kind: kind)
        for (event, expected) in Self.paths[kind] ?? [] {
            #expect(machine.handle(event) == expected, "\(kind): \(event) while \(machine.phase)")
        }
        #expect(machine.phase == .committed)
    }

    @Test func aSnapshotThatCompletesBeforeItsSetupIsSeenStillCommits() {
        var machine = M(kind: .backgroundSnapshot)
        for (event, _) in (Self.paths[.backgroundSnapshot] ?? []).prefix(5) { _ = machine.handle(event) }
        #expect(machine.handle(.sourceCompleted).isEmpty)
        #expect(machine.handle(.setupDone) == [.resume])
        #expect(machine.handle(.resumed) == [.finishMemory])
        #expect(machine.handle(.memoryDurable) == [.finishDisk])
    }

    static let failures: [M.Event] =
        M.Part.allCases.map { M.Event.failed($0, "boom") } + [.exited(.instance), .timedOut, .cancelled("stop requested")]

    @Test(arguments: [M.Kind.stopAndSave, .backgroundSnapshot])
    func everyFailureInEveryPhaseHasItsOutcome(kind: M.Kind) {
        let path = Self.paths[kind] ?? []
        // Every phase the success path passes through before it commits.
        for steps in 1..<path.count {
            var reference = M(kind: kind)
            for (event, _) in path.prefix(steps) { _ = reference.handle(event) }
            let phase = reference.phase
            let events = path.prefix(steps).map(\.0)
            let paused = events.contains(.paused) && !events.contains(.resumed)
            let migrating = events.contains(.migrationStarted) || (kind == .stopAndSave && events.contains(.paused))
                || (kind == .backgroundSnapshot && events.contains(.diskCut))
            let sourceDone = events.contains(.sourceCompleted)
            let cutMade = events.contains(.diskCut)
            for failure in Self.failures {
                var machine = reference
                let actions = machine.handle(failure)
                let context: Comment = "\(kind): \(failure) while \(phase)"
                if failure == .timedOut && (sourceDone || !migrating) {
                    #expect(actions.isEmpty && machine.phase == phase, context)
                    continue
                }
                #expect(machine.phase == .failed, context)
                let lost = failure == .exited(.instance)
                #expect(machine.failure?.outcome == (lost ? .vmLost : .vmRunsOn), context)
                #expect(machine.failure?.phase == phase, context)
                #expect(actions.suffix(3) == [.abortSink, .releaseDisk(cutMade: cutMade), .discardRecord], context)
                #expect(actions.contains(.cancelMigration) == (migrating && !lost), context)
                #expect(actions.contains(.resumeGuest) == (paused && !lost), context)
                #expect(actions.contains(.resetCapabilities) == (kind == .backgroundSnapshot && !lost), context)
                #expect(machine.handle(.committed).isEmpty, context)
            }
        }
    }

    @Test func anEventOutOfOrderFails() {
        var machine = M(kind: .stopAndSave)
        _ = machine.handle(.start)
        let actions = machine.handle(.resumed)
        #expect(machine.phase == .failed)
        #expect(actions.last == .discardRecord)
    }
}
