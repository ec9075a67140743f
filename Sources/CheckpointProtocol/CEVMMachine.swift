/// The CEVM checkpoint (DESIGN.md, "The checkpoint, step by step") as a
/// value: it takes what happened (an action finished, a QEMU exited, the
/// stream grew, a timer fired, someone cancelled) and says what to do next.
/// It performs no I/O; a driver carries out the actions and reports back.
///
///     preparing ──prepared──▶ migrating ──sourceCompleted──▶ switchingOver(cuttingDisk)
///                               │  ▲ streamProgress > limit:        │ diskCut
///                               │  └ forceSwitchOver (or fail)      ▼
///                               │                         switchingOver(resumingNew)
///                               │                                   │ newResumed
///                               ▼                                   ▼
///                     failed(oldRunsOn | vmLost)            adopting ──adopted──▶ draining
///                                                                   │ memory, disk durable, Old_VM ended
///                                                                   ▼
///                                            failed(newRunsOn) ◀── committing ──committed──▶ committed
///
/// Every failure is a transition to `failed` with the outcome DESIGN.md
/// fixes: before New_VM runs, the migration is cancelled and Old_VM runs on
/// (or the VM is lost, when Old_VM itself died); from New_VM's `cont` on,
/// New_VM runs on. Either way the partial record is removed; the actions
/// returned with the transition say how.
public struct CEVMMachine: Sendable {
    public struct Limits: Sendable, Equatable {
        /// The stream size past which pre-copy counts as not converging.
        public var streamBytes: Int64
        /// What to do then.
        public var onLimit: LimitAction
        /// A forced switch-over that has not come once the stream passed
        /// this is given up too.
        public var backstopBytes: Int64

        public init(streamBytes: Int64, onLimit: LimitAction, backstopBytes: Int64) {
            self.streamBytes = streamBytes
            self.onLimit = onLimit
            self.backstopBytes = backstopBytes
        }
    }

    public enum LimitAction: Sendable, Equatable {
        case forceSwitchOver
        case cancel
    }

    public enum SwitchStep: String, Sendable, Equatable {
        case cuttingDisk, resumingNew
    }

    public struct Draining: Sendable, Equatable {
        public var oldEnded = false
        public var memoryDurable = false
        public var diskDurable = false
        /// New_VM exited after the switch-over: the record (made from
        /// Old_VM's state) still commits; the VM itself is lost.
        public var newLost = false
        var done: Bool { oldEnded && memoryDurable && diskDurable }
    }

    public enum Phase: Sendable, Equatable {
        case idle
        case preparing
        /// `forcedAt`: the stream size at which the switch-over was forced.
        case migrating(forcedAt: Int64?)
        case switchingOver(SwitchStep)
        /// New_VM runs; the driver makes it the VM's instance.
        case adopting
        case draining(Draining)
        case committing(newLost: Bool)
        case committed(newLost: Bool)
        case failed(Failure)

        public var isTerminal: Bool {
            switch self {
            case .committed, .failed: return true
            default: return false
            }
        }

        /// Before New_VM was told to run, the VM is Old_VM.
        var beforeSwitchOver: Bool {
            switch self {
            case .idle, .preparing, .migrating, .switchingOver: return true
            default: return false
            }
        }

        public var name: String {
            switch self {
            case .idle: return "idle"
            case .preparing: return "preparing"
            case .migrating(let forced): return forced == nil ? "migrating" : "migrating (switch-over forced)"
            case .switchingOver(let step): return "switching over (\(step.rawValue))"
            case .adopting: return "adopting New_VM"
            case .draining: return "draining"
            case .committing: return "committing"
            case .committed: return "committed"
            case .failed: return "failed"
            }
        }
    }

    /// The parts of a checkpoint that can fail or end on their own.
    public enum Part: String, Sendable, Equatable, CaseIterable {
        case oldVM = "Old_VM"
        case newVM = "New_VM"
        case tee = "the stream tee"
        case migration = "the migration"
        case disk = "the disk manager"
        case record = "the record"
    }

    public enum Event: Sendable, Equatable {
        case start
        case prepared
        case migrationStarted
        /// The tee's count of stream bytes so far.
        case streamProgress(Int64)
        /// The source's stream ended and the tee passed all of it on.
        case sourceCompleted
        case diskCut
        case newResumed
        case adopted
        case oldEnded
        case memoryDurable
        case diskDurable
        case committed
        /// A QEMU process ended without being asked to.
        case exited(Part)
        /// An action or a watch of `part` failed.
        case failed(Part, String)
        /// The migration timer fired.
        case timedOut
        case cancelled(String)
    }

    public enum Action: Sendable, Equatable {
        /// Start New_VM (`-incoming defer`, pinned to the pre-copy set), the
        /// tee, the migration settings; prepare the disk cut (U, the record).
        case prepare
        /// `migrate` Old_VM into the tee; arm the migration timer; watch
        /// New_VM, the tee and the source.
        case startMigration
        /// Raise `downtime-limit` so that the next round is the last.
        case forceSwitchOver(atBytes: Int64)
        case cutDisk
        /// Pin New_VM to its set and let it run.
        case resumeNew
        /// New_VM is the VM's instance from here on.
        case adoptNew
        case stopOld
        case finishMemory
        case finishDisk
        case commit
        // Undoing, after a failure:
        case cancelMigration
        /// Old_VM runs on (`cont` if it stopped; capabilities reset).
        case resumeOld
        case stopNew
        case abortTee
        /// The disk stays whole: a prepared cut is abandoned, a made cut is
        /// finished and its record forgotten.
        case releaseDisk(cutMade: Bool)
        case discardRecord
    }

    public enum Outcome: String, Sendable, Equatable {
        /// The checkpoint failed before the switch-over: the VM runs on Old_VM.
        case oldRunsOn = "the VM runs on"
        /// The checkpoint failed after the switch-over: the VM runs on New_VM.
        case newRunsOn = "the VM runs on in its new instance"
        /// The instance running the VM died.
        case vmLost = "the VM was lost with its instance"
    }

    public enum Reason: Sendable, Equatable {
        case exited(Part)
        case failed(Part, String)
        /// The stream passed `limit`; `forced`: after a forced switch-over.
        case streamLimit(bytes: Int64, limit: Int64, forced: Bool)
        case timedOut
        case cancelled(String)
    }

    public struct Failure: Sendable, Equatable {
        /// The phase the checkpoint was in when it failed.
        public var phase: String
        public var reason: Reason
        public var outcome: Outcome
    }

    public private(set) var phase: Phase = .idle
    public let limits: Limits
    private var diskCutMade = false

    public init(limits: Limits) {
        self.limits = limits
    }

    /// Feeds one event; returns the actions to carry out, in order.
    public mutating func handle(_ event: Event) -> [Action] {
        switch (phase, event) {
        case (.idle, .start):
            phase = .preparing
            return [.prepare]
        case (.preparing, .prepared):
            phase = .migrating(forcedAt: nil)
            return [.startMigration]

        case (.migrating, .migrationStarted):
            return []
        case (.migrating(let forcedAt), .streamProgress(let bytes)):
            if let forcedAt {
                guard bytes > limits.backstopBytes else { return [] }
                return fail(.streamLimit(bytes: bytes, limit: limits.backstopBytes, forced: true), forcedAt: forcedAt)
            }
            guard bytes > limits.streamBytes else { return [] }
            switch limits.onLimit {
            case .cancel:
                return fail(.streamLimit(bytes: bytes, limit: limits.streamBytes, forced: false))
            case .forceSwitchOver:
                phase = .migrating(forcedAt: bytes)
                return [.forceSwitchOver(atBytes: bytes)]
            }
        case (.migrating, .sourceCompleted):
            phase = .switchingOver(.cuttingDisk)
            return [.cutDisk]

        case (.switchingOver(.cuttingDisk), .diskCut):
            diskCutMade = true
            phase = .switchingOver(.resumingNew)
            return [.resumeNew]
        case (.switchingOver(.resumingNew), .newResumed):
            phase = .adopting
            return [.adoptNew]
        case (.adopting, .adopted):
            phase = .draining(Draining())
            return [.stopOld, .finishMemory, .finishDisk]

        case (.draining(var state), .oldEnded):
            state.oldEnded = true
            return drained(state)
        case (.draining(var state), .memoryDurable):
            state.memoryDurable = true
            return drained(state)
        case (.draining(var state), .diskDurable):
            state.diskDurable = true
            return drained(state)
        // Old_VM's end is reported twice when it died on its own before
        // the driver's stop of it returned.
        case (.committing, .oldEnded):
            return []
        case (.committing(let newLost), .committed):
            phase = .committed(newLost: newLost)
            return []

        // Once the tee has the whole stream, Old_VM is needed no more: its
        // end is harmless, and expected once it is stopped.
        case (.switchingOver, .exited(.oldVM)), (.adopting, .exited(.oldVM)), (.draining, .exited(.oldVM)),
            (.committing, .exited(.oldVM)):
            if case .draining(var state) = phase {
                state.oldEnded = true
                return drained(state)
            }
            return []
        // New_VM dies after its switch-over: the record, made from Old_VM's
        // state, still commits; the VM is lost with New_VM.
        case (.adopting, .exited(.newVM)):
            return fail(.exited(.newVM), outcome: .vmLost)
        case (.draining(var state), .exited(.newVM)):
            state.newLost = true
            phase = .draining(state)
            return []
        case (.committing, .exited(.newVM)):
            phase = .committing(newLost: true)
            return []
        // Progress outside pre-copy, and a migration timer once the stream
        // has ended, mean nothing.
        case (_, .streamProgress), (_, .migrationStarted):
            return []
        case (.switchingOver, .timedOut), (.adopting, .timedOut), (.draining, .timedOut), (.committing, .timedOut):
            return []
        case (.switchingOver, .sourceCompleted), (.adopting, .sourceCompleted), (.draining, .sourceCompleted),
            (.committing, .sourceCompleted):
            return []

        case (.committed, _), (.failed, _):
            return []

        case (_, .exited(let part)):
            return fail(.exited(part))
        case (_, .failed(let part, let message)):
            return fail(.failed(part, message))
        case (_, .timedOut):
            return fail(.timedOut)
        case (_, .cancelled(let why)):
            return fail(.cancelled(why))
        default:
            return fail(.failed(.record, "unexpected \(event) while \(phase.name)"))
        }
    }

    private mutating func drained(_ state: Draining) -> [Action] {
        if state.done {
            phase = .committing(newLost: state.newLost)
            return [.commit]
        }
        phase = .draining(state)
        return []
    }

    /// The transition to `failed`, and the actions that undo what was done.
    private mutating func fail(_ reason: Reason, outcome: Outcome? = nil, forcedAt: Int64? = nil) -> [Action] {
        let before = phase.beforeSwitchOver
        let oldDied = reason == .exited(.oldVM)
        let resolved = outcome ?? (before ? (oldDied ? .vmLost : .oldRunsOn) : .newRunsOn)
        let oldEnded: Bool
        if case .draining(let state) = phase { oldEnded = state.oldEnded } else { oldEnded = false }
        let failure = Failure(phase: phase.name, reason: reason, outcome: resolved)
        phase = .failed(failure)
        var actions: [Action] = []
        if before {
            actions.append(.cancelMigration)
            if !oldDied { actions.append(.resumeOld) }
            actions.append(.stopNew)
        } else if !oldEnded {
            actions.append(.stopOld)
        }
        actions += [.abortTee, .releaseDisk(cutMade: diskCutMade), .discardRecord]
        return actions
    }
}

extension CEVMMachine.Action {
    /// The event that reports this action's end (nil for an undo action).
    public var completion: CEVMMachine.Event? {
        switch self {
        case .prepare: return .prepared
        case .startMigration: return .migrationStarted
        case .cutDisk: return .diskCut
        case .resumeNew: return .newResumed
        case .adoptNew: return .adopted
        case .stopOld: return .oldEnded
        case .finishMemory: return .memoryDurable
        case .finishDisk: return .diskDurable
        case .commit: return .committed
        case .forceSwitchOver, .cancelMigration, .resumeOld, .stopNew, .abortTee, .releaseDisk, .discardRecord: return nil
        }
    }
}

extension CEVMMachine.Failure: CustomStringConvertible {
    public var description: String {
        let what: String
        switch reason {
        case .exited(let part): what = "\(part.rawValue) ended unexpectedly"
        case .failed(let part, let message): what = "\(part.rawValue) failed: \(message)"
        case .streamLimit(let bytes, let limit, let forced):
            if forced {
                what = "the migration did not complete after its switch-over was forced: the memory stream reached \(bytes >> 20) MiB"
            } else {
                what = "the migration did not converge: the memory stream passed --max-stream \(limit >> 20) MiB"
                    + " (at \(bytes >> 20) MiB; the guest dirties memory faster than it can be sent)"
            }
        case .timedOut: what = "the migration did not complete in time"
        case .cancelled(let why): what = "cancelled: \(why)"
        }
        return "\(what) while \(phase); \(outcome.rawValue)"
    }
}
