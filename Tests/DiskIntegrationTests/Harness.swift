import DiskIntegration
import TestSupport

/// SplitMix64 from TestSupport, under the name these tests use.
typealias SplitMix64 = SeededRandom

/// Bugs the harness can inject to show the property checks have teeth. Each
/// reproduces one of the Promela model's bug switches.
enum InjectedBug: Sendable, CaseIterable {
    /// BUG_COPY_MAP: the sweep enumerates a copy of T's map taken at start.
    case copyMap
    /// BUG_RECORD_IS_T: the record is T itself, no copy before write.
    case recordIsT
    /// BUG_CURSOR_TO_T: a write at the cursor's own cluster is sent to T.
    case cursorToT
}

/// A violated property (DESIGN.md 1-4), or an error the harness hit.
enum Violation: Sendable, Hashable, CustomStringConvertible {
    case staleRead(RequestID, offset: Int, expected: [UInt8], got: [UInt8])  // P1
    case lostWrite(cluster: Int, expected: [UInt8], got: [UInt8])  // P2
    case recordMismatch(cluster: Int)  // P3
    case notTerminated(steps: Int)  // P4
    case deadlock  // P4
    case error(String)

    var property: Int {
        switch self {
        case .staleRead: 1
        case .lostWrite: 2
        case .recordMismatch: 3
        case .notTerminated, .deadlock: 4
        case .error: 0
        }
    }

    var description: String {
        switch self {
        case .staleRead(let id, let offset, let expected, let got):
            "P1 stale read \(id) at \(offset): expected \(expected), got \(got)"
        case .lostWrite(let cluster, let expected, let got):
            "P2 lost write in cluster \(cluster): expected \(expected), U+B has \(got)"
        case .recordMismatch(let cluster): "P3 record differs from T at switch-over in cluster \(cluster)"
        case .notTerminated(let steps): "P4 UPDATE_DONE not reached after \(steps) steps"
        case .deadlock: "P4 deadlock: nothing can move before UPDATE_DONE"
        case .error(let text): "error: \(text)"
        }
    }
}

/// The T allocation as a buggy sweep would see it: enumeration from a copy
/// of the map taken at switch-over (BUG_COPY_MAP), membership live.
struct FrozenMapQuery: ClusterAllocationQuery {
    let store: InMemoryClusterStore
    let frozen: Set<Int>
    func holds(_ layer: Layer, cluster: Int) -> Bool { store.holds(layer, cluster: cluster) }
    func firstAllocated(in layer: Layer, from: Int) -> Int? {
        layer == .T ? frozen.filter { $0 >= from }.min() : store.firstAllocated(in: layer, from: from)
    }
}

/// Both sides, the channel between them, the store, and a reference model of
/// the disk New_VM must see. The I/O layer of this harness carries out the
/// actions; the properties are checked against the reference.
struct Harness {
    let geometry: Geometry
    private(set) var store: InMemoryClusterStore
    private(set) var old: OldSide
    private(set) var new: NewSide
    private(set) var toOld: [NewToOld] = []
    private(set) var toNew: [OldToNew] = []
    private var payloads: [RequestID: [UInt8]] = [:]
    private var replies: [RequestID: [UInt8]] = [:]
    private var requests: [RequestID: DiskRequest] = [:]
    /// The disk as New_VM must see it: last write, else T at switch-over, else B.
    private(set) var reference: [UInt8]
    /// T (+) B at switch-over.
    let snapshot: [UInt8]
    let s0: Set<Int>
    let bug: InjectedBug?
    private(set) var violations: [Violation] = []
    private(set) var sweptClusters: [Int] = []
    private(set) var completed: [RequestID] = []
    /// How often the interesting cases happened (so a pass is not vacuous).
    private(set) var coverage: [Coverage: Int] = [:]
    private var nextID: UInt64 = 1

    init(geometry: Geometry, base: [[UInt8]], t: [Int: [UInt8]], bug: InjectedBug? = nil) throws {
        self.geometry = geometry
        self.store = try InMemoryClusterStore(geometry: geometry, base: base, t: t)
        self.s0 = Set(t.keys)
        self.old = try OldSide(geometry: geometry, switchOverClusters: s0)
        self.new = NewSide(geometry: geometry)
        var disk: [UInt8] = []
        for k in 0..<geometry.clusterCount { disk += t[k] ?? base[k] }
        self.reference = disk
        self.snapshot = disk
        self.bug = bug
    }

    var isFinished: Bool { old.isDone && new.state == .plain && toNew.isEmpty && toOld.isEmpty }

    // MARK: New_VM

    /// New_VM issues a request; returns its id.
    @discardableResult
    mutating func submit(_ kind: DiskRequest.Kind, offset: Int, length: Int, payload: [UInt8] = []) -> RequestID {
        let id = RequestID(nextID)
        nextID += 1
        let request = DiskRequest(id: id, kind: kind, offset: offset, length: length)
        requests[id] = request
        if kind == .write { payloads[id] = payload } else { replies[id] = [UInt8](repeating: 0, count: length) }
        do {
            let actions = try new.submit(request, store)
            if new.state == .plain {
                carryOutServed(actions, requests: [request])
            } else {
                carryOutNewSide(actions)
            }
        } catch {
            violations.append(.error("submit: \(error)"))
        }
        return id
    }

    mutating func submitWrite(cluster: Int, byte: UInt8) {
        submit(
            .write, offset: cluster * geometry.clusterSize, length: geometry.clusterSize,
            payload: [UInt8](repeating: byte, count: geometry.clusterSize))
    }

    mutating func submitRead(cluster: Int) {
        submit(.read, offset: cluster * geometry.clusterSize, length: geometry.clusterSize)
    }

    /// New_VM's side takes one message from the old side.
    mutating func newReceive() {
        guard !toNew.isEmpty else { return }
        let message = toNew.removeFirst()
        do {
            let wasPlain = new.state == .plain
            let held = new.held
            let actions = try new.receive(message, store)
            if !wasPlain, new.state == .plain {
                carryOutServed(actions, requests: held)
            } else {
                carryOutNewSide(actions)
            }
        } catch {
            violations.append(.error("New side receive \(message): \(error)"))
        }
    }

    // MARK: The old side

    /// Seed CP 2-9.
    mutating func sweep() {
        do {
            let actions: [IntegrationAction]
            if bug == .copyMap {
                actions = try old.sweepStep(FrozenMapQuery(store: store, frozen: s0))
            } else {
                actions = try old.sweepStep(store)
            }
            if let cursor = old.cursor, actions.contains(.copyCluster(from: .T, to: .U, cluster: cursor)) {
                sweptClusters.append(cursor)
            }
            try carryOutOldSide(actions)
        } catch {
            violations.append(.error("sweep: \(error)"))
        }
    }

    /// Seed CP 10-16 for one message.
    mutating func oldReceive() {
        guard !toOld.isEmpty else { return }
        let message = toOld.removeFirst()
        do {
            var actions = try old.receive(message, store)
            if bug == .cursorToT, let cursor = old.cursor {
                actions = actions.map { action in
                    if case .write(.U, let span, let id) = action, span.cluster == cursor {
                        return .write(to: .T, span: span, request: id)
                    }
                    return action
                }
            }
            if case .request(let request) = message {
                recordCoverage(request, actions)
                try carryOutOldSide(actions.filter { !$0.isMessage })
                linearize(request)
                try carryOutOldSide(actions.filter { $0.isMessage })
            } else {
                try carryOutOldSide(actions)
            }
        } catch {
            violations.append(.error("old side receive \(message): \(error)"))
        }
    }

    private mutating func recordCoverage(_ request: DiskRequest, _ actions: [IntegrationAction]) {
        let spans = geometry.split(offset: request.offset, length: request.length)
        if spans.count > 1 { coverage[.multiCluster, default: 0] += 1 }
        if spans.contains(where: { old.isIntegrated(cluster: $0.cluster) }),
            spans.contains(where: { !old.isIntegrated(cluster: $0.cluster) })
        {
            coverage[.spansCursor, default: 0] += 1
        }
        for action in actions {
            switch action {
            case .saveToRecord: coverage[.copyBeforeWrite, default: 0] += 1
            case .copyCluster(_, .U, _): coverage[.partialFillU, default: 0] += 1
            case .copyCluster(_, .T, _): coverage[.partialFillT, default: 0] += 1
            case .write(.T, let span, _) where !s0.contains(span.cluster):
                coverage[.writeToClusterTDidNotHold, default: 0] += 1
            case .write(.U, let span, _) where !span.isWholeCluster:
                coverage[.partialWrite, default: 0] += 1
            default: break
            }
        }
    }

    // MARK: Carrying out actions

    private mutating func perform(_ action: IntegrationAction) throws {
        if bug == .recordIsT, case .saveToRecord = action { return }
        try store.perform(action, payloads: payloads, replies: &replies)
    }

    private mutating func carryOutOldSide(_ actions: [IntegrationAction]) throws {
        for action in actions {
            switch action {
            case .sendToNewSide(let message): toNew.append(message)
            case .sendToOldSide, .complete: violations.append(.error("old side emitted \(action)"))
            default: try perform(action)
            }
        }
    }

    private mutating func carryOutNewSide(_ actions: [IntegrationAction]) {
        for action in actions {
            switch action {
            case .sendToOldSide(let message): toOld.append(message)
            case .complete(let id): completed.append(id)
            default: violations.append(.error("New side emitted \(action) outside plain mode"))
            }
        }
    }

    /// Plain mode: the New side's own store actions for `requests`, each
    /// linearized when its `complete` comes.
    private mutating func carryOutServed(_ actions: [IntegrationAction], requests served: [DiskRequest]) {
        do {
            for action in actions {
                switch action {
                case .complete(let id):
                    completed.append(id)
                    if let request = served.first(where: { $0.id == id }) { linearize(request) }
                case .sendToOldSide(let message): toOld.append(message)
                default: try perform(action)
                }
            }
        } catch {
            violations.append(.error("plain mode: \(error)"))
        }
    }

    /// The request takes effect: a write updates the reference, a read is
    /// checked against it (P1).
    private mutating func linearize(_ request: DiskRequest) {
        let range = request.offset..<(request.offset + request.length)
        switch request.kind {
        case .write:
            if let payload = payloads[request.id] { reference.replaceSubrange(range, with: payload) }
        case .read:
            let got = replies[request.id] ?? []
            let expected = Array(reference[range])
            if got != expected {
                violations.append(.staleRead(request.id, offset: request.offset, expected: expected, got: got))
            }
        }
    }

    // MARK: Driving and checking

    mutating func record(_ violation: Violation) { violations.append(violation) }

    /// Loses every message on its way to New_VM's side (to show P4's check
    /// fires: without INTEGRATE_END nobody can move).
    mutating func dropMessagesToNewSide() { toNew.removeAll() }

    /// Deterministic drive to the end: deliver to New_VM first, then to the
    /// old side, else sweep.
    mutating func runToCompletion(maxSteps: Int = 10_000) {
        var steps = 0
        while !isFinished, steps < maxSteps, violations.allSatisfy({ $0.property != 0 }) {
            steps += 1
            if !toNew.isEmpty {
                newReceive()
            } else if !toOld.isEmpty {
                oldReceive()
            } else if !old.eofOnT {
                sweep()
            } else {
                violations.append(.deadlock)
                return
            }
        }
        if !isFinished { violations.append(.notTerminated(steps: steps)) }
    }

    /// P2 and P3, once UPDATE_DONE was reached.
    mutating func checkFinalProperties() {
        let size = geometry.clusterSize
        for k in 0..<geometry.clusterCount {
            let expected = Array(reference[(k * size)..<((k + 1) * size)])
            let got = store.visible(over: .U, cluster: k) ?? []
            if got != expected { violations.append(.lostWrite(cluster: k, expected: expected, got: got)) }
            let record = bug == .recordIsT ? store.t[k] : store.record[k]
            let switchOver = Array(snapshot[(k * size)..<((k + 1) * size)])
            if s0.contains(k) ? record != switchOver : record != nil {
                violations.append(.recordMismatch(cluster: k))
            }
        }
    }
}

enum Coverage: Hashable, CaseIterable {
    case multiCluster, spansCursor, copyBeforeWrite, partialFillU, partialFillT
    case writeToClusterTDidNotHold, partialWrite
}

extension IntegrationAction {
    var isMessage: Bool {
        switch self {
        case .sendToNewSide, .sendToOldSide, .complete: true
        default: false
        }
    }
}
