/// The two mechanisms that checkpoint a VM in its own instance, as one
/// value (see `CEVMMachine` for the shape):
///
/// - **stop-and-save** (seed 001's T_cpt): pause, stream memory into the
///   sink, cut the disk at the same instant, resume; the memory is made
///   durable (a format 2 record: parsed from its spool into pages) and the
///   disk record written while the guest runs again. The record commits
///   only once both are durable, so resuming first loses nothing: a crash
///   before the commit leaves the previous record.
///
///       preparing ─▶ pausing ─▶ migrating ─sourceCompleted─▶ cuttingDisk
///         ─▶ resuming ─▶ savingMemory ─memoryDurable─▶ writingDisk ─▶ committing
///
/// - **background-snapshot** (seeds 000/003, userfaultfd write protection):
///   pause, cut the disk at the same instant, start the snapshot, resume as
///   soon as its setup (device state, write protection) is done; RAM is
///   written while the guest runs.
///
///       preparing ─▶ pausing ─▶ cuttingDisk ─▶ migrating ─▶ awaitingSetup
///         ─setupDone─▶ resuming ─▶ saving ─sourceCompleted─▶ savingMemory
///         ─memoryDurable─▶ writingDisk ─▶ committing
///
/// A failure in any phase cancels the migration, lets the guest run again
/// if it was paused, and removes the partial record; the VM is lost only
/// when its instance itself ended.
public struct SnapshotMachine: Sendable {
    public enum Kind: String, Sendable, Equatable {
        case stopAndSave = "stop-and-save"
        case backgroundSnapshot = "background-snapshot"
    }

    public enum Phase: String, Sendable, Equatable {
        case idle, preparing, pausing, cuttingDisk, migrating, awaitingSetup, resuming, saving, savingMemory, writingDisk
        case committing, committed, failed
    }

    public enum Part: String, Sendable, Equatable, CaseIterable {
        case instance = "the VM's instance"
        case sink = "the memory sink"
        case migration = "the migration"
        case disk = "the disk manager"
        case record = "the record"
    }

    public enum Event: Sendable, Equatable {
        case start
        case prepared
        case paused
        case diskCut
        case migrationStarted
        /// background-snapshot: RAM pages flow, the device state is saved.
        case setupDone
        case resumed
        /// The migration completed.
        case sourceCompleted
        case memoryDurable
        case diskDurable
        case committed
        case exited(Part)
        case failed(Part, String)
        case timedOut
        case cancelled(String)
    }

    public enum Action: Sendable, Equatable {
        /// The sink, the migration settings (and the background-snapshot
        /// capability), the migration watch, the disk cut prepared.
        case prepare
        /// QMP `stop`: drains and flushes every block device.
        case pause
        case cutDisk
        /// `migrate` into the sink; arm the timer; watch the instance, the sink, the migration.
        case startMigration
        /// Wait for the snapshot's setup to end.
        case awaitSetup
        case resume
        case finishMemory
        case finishDisk
        case commit
        // Undoing, after a failure:
        case cancelMigration
        /// `cont`, if the guest is paused.
        case resumeGuest
        /// background-snapshot: the capability off once the migration ended.
        case resetCapabilities
        case abortSink
        case releaseDisk(cutMade: Bool)
        case discardRecord
    }

    public enum Outcome: String, Sendable, Equatable {
        case vmRunsOn = "the VM runs on"
        case vmLost = "the VM was lost with its instance"
    }

    public struct Failure: Sendable, Equatable, CustomStringConvertible {
        public var phase: Phase
        public var reason: Event
        public var outcome: Outcome

        public var description: String {
            let what: String
            switch reason {
            case .exited(let part): what = "\(part.rawValue) ended unexpectedly"
            case .failed(let part, let message): what = "\(part.rawValue) failed: \(message)"
            case .timedOut: what = "the migration did not complete in time"
            case .cancelled(let why): what = "cancelled: \(why)"
            default: what = "unexpected \(reason)"
            }
            return "\(what) while \(phase.rawValue); \(outcome.rawValue)"
        }
    }

    public let kind: Kind
    public private(set) var phase: Phase = .idle
    public private(set) var failure: Failure?
    private var paused = false
    private var migrating = false
    private var cutMade = false
    private var sourceDone = false

    public init(kind: Kind) {
        self.kind = kind
    }

    public mutating func handle(_ event: Event) -> [Action] {
        switch (phase, event) {
        case (.idle, .start):
            return enter(.preparing, [.prepare])
        case (.preparing, .prepared):
            return enter(.pausing, [.pause])
        case (.pausing, .paused):
            paused = true
            return kind == .stopAndSave ? startMigration() : enter(.cuttingDisk, [.cutDisk])
        case (.cuttingDisk, .diskCut):
            cutMade = true
            return kind == .stopAndSave ? enter(.resuming, [.resume]) : startMigration()
        case (.migrating, .migrationStarted):
            return kind == .stopAndSave ? [] : enter(.awaitingSetup, [.awaitSetup])
        case (.migrating, .sourceCompleted) where kind == .stopAndSave:
            sourceDone = true
            return enter(.cuttingDisk, [.cutDisk])
        case (.savingMemory, .memoryDurable):
            return enter(.writingDisk, [.finishDisk])
        case (.awaitingSetup, .setupDone):
            return enter(.resuming, [.resume])
        case (.resuming, .resumed):
            paused = false
            return sourceDone ? enter(.savingMemory, [.finishMemory]) : enter(.saving, [])
        case (.saving, .sourceCompleted):
            sourceDone = true
            return enter(.savingMemory, [.finishMemory])
        // A small guest's snapshot may complete before its setup was seen.
        case (.awaitingSetup, .sourceCompleted), (.resuming, .sourceCompleted):
            sourceDone = true
            return []
        case (.writingDisk, .diskDurable):
            return enter(.committing, [.commit])
        case (.committing, .committed):
            return enter(.committed, [])

        case (.committed, _), (.failed, _):
            return []
        case (_, .migrationStarted):
            return []
        case (_, .sourceCompleted) where sourceDone:
            return []
        case (_, .timedOut) where sourceDone || !migrating:
            return []
        case (_, .exited), (_, .failed), (_, .timedOut), (_, .cancelled):
            return fail(event)
        default:
            return fail(.failed(.record, "unexpected \(event) while \(phase.rawValue)"))
        }
    }

    private mutating func enter(_ next: Phase, _ actions: [Action]) -> [Action] {
        phase = next
        return actions
    }

    private mutating func startMigration() -> [Action] {
        migrating = true
        return enter(.migrating, [.startMigration])
    }

    private mutating func fail(_ reason: Event) -> [Action] {
        let lost = reason == .exited(.instance)
        failure = Failure(phase: phase, reason: reason, outcome: lost ? .vmLost : .vmRunsOn)
        phase = .failed
        var actions: [Action] = []
        if migrating && !lost { actions.append(.cancelMigration) }
        if paused && !lost { actions.append(.resumeGuest) }
        if kind == .backgroundSnapshot && !lost { actions.append(.resetCapabilities) }
        actions += [.abortSink, .releaseDisk(cutMade: cutMade), .discardRecord]
        return actions
    }
}

extension SnapshotMachine: PhaseMachine {
    public static var start: Event { .start }
    public static func cancel(_ why: String) -> Event { .cancelled(why) }
    public var isTerminal: Bool { phase == .committed || phase == .failed }
    public var phaseName: String { phase.rawValue }
}
