import DiskIntegration
import Testing

/// The counterexamples spin finds for the model's bug switches
/// (scripts/verify-protocols, shortest trails), hand-translated step by step.
/// Each runs against the real core (must satisfy every property) and with the
/// same bug injected (the property spin reported must be violated).
///
/// Model values: B = 0, T's switch-over content = 1, New_VM's writes 2, 3, ...
/// One model cluster = one whole cluster here.
@Suite("spin counterexamples replayed against the Swift core")
struct SpinTrailTests {
    static let geometry = Result { try Geometry(clusterSize: 4, clusterCount: 3) }

    static func harness(tHolds: [Int], bug: InjectedBug?) throws -> Harness {
        let geometry = try Self.geometry.get()
        let base = (0..<3).map { _ in [UInt8](repeating: 0, count: 4) }
        var t: [Int: [UInt8]] = [:]
        for k in tHolds { t[k] = [UInt8](repeating: 1, count: 4) }
        return try Harness(geometry: geometry, base: base, t: t, bug: bug)
    }

    /// -DBUG_COPY_MAP trail:
    ///   INIT T holds 0, 2
    ///   NEW write cluster 1 value 2; NEW read cluster 1
    ///   CP4 sweep 0 (record 0); AD5 write 1 -> T (cursor 0)
    ///   CP4 sweep 2 (record 2)          <- the copied map skips cluster 1
    ///   AD7 read 1 -> 0, expected 2     (P1 violated)
    @Test("BUG_COPY_MAP trail", arguments: [nil, InjectedBug.copyMap])
    func copyMapTrail(bug: InjectedBug?) throws {
        var h = try Self.harness(tHolds: [0, 2], bug: bug)
        h.submitWrite(cluster: 1, byte: 2)
        h.submitRead(cluster: 1)
        h.sweep()
        #expect(h.old.cursor == 0)
        h.oldReceive()  // AD 4-5: cluster 1 is above the cursor: into T
        #expect(h.store.t[1] == [2, 2, 2, 2])
        h.sweep()
        if bug == nil {
            // CP 3 asks T as it is now: cluster 1, allocated after the start, comes next.
            #expect(h.old.cursor == 1)
            #expect(h.store.u[1] == [2, 2, 2, 2])
        } else {
            #expect(h.old.cursor == 2)
        }
        h.oldReceive()  // the read of cluster 1
        h.runToCompletion()
        h.checkFinalProperties()
        if bug == nil {
            #expect(h.violations.isEmpty, "\(h.violations)")
            #expect(h.sweptClusters == [0, 1, 2])
        } else {
            #expect(h.violations.contains { if case .staleRead = $0 { true } else { false } }, "\(h.violations)")
            #expect(h.violations.contains { $0.property == 2 }, "\(h.violations)")
        }
    }

    /// -DBUG_RECORD_IS_T trail:
    ///   INIT T holds 0, 1
    ///   NEW write cluster 1 value 2
    ///   CP4 sweep 0; AD5 write 1 -> T (cursor 0); CP4 sweep 1 (value 2)
    ///   CP6 INTEGRATE_END; CP14 LAST_UPDATE -> UPDATE_DONE
    ///   record cluster 1 == 2, switch-over was 1 (P3 violated)
    @Test("BUG_RECORD_IS_T trail", arguments: [nil, InjectedBug.recordIsT])
    func recordIsTTrail(bug: InjectedBug?) throws {
        var h = try Self.harness(tHolds: [0, 1], bug: bug)
        h.submitWrite(cluster: 1, byte: 2)
        h.sweep()
        h.oldReceive()
        // DESIGN copy before write: cluster 1's switch-over content went to
        // the record before the write reached T.
        if bug == nil { #expect(h.store.record[1] == [1, 1, 1, 1]) }
        h.sweep()
        #expect(h.old.cursor == 1)
        h.runToCompletion()
        h.checkFinalProperties()
        if bug == nil {
            #expect(h.violations.isEmpty, "\(h.violations)")
            #expect(h.store.record == [0: [1, 1, 1, 1], 1: [1, 1, 1, 1]])
        } else {
            #expect(h.violations == [.recordMismatch(cluster: 1)])
        }
    }

    /// -DBUG_CURSOR_TO_T trail:
    ///   INIT T holds 0, 1
    ///   NEW write cluster 0 value 2; NEW read cluster 0
    ///   CP4 sweep 0; AD5 write 0 -> T (cursor 0)   <- should be AD3, into U
    ///   CP4 sweep 1
    ///   AD7 read 0 -> 1, expected 2     (P1 violated)
    @Test("BUG_CURSOR_TO_T trail", arguments: [nil, InjectedBug.cursorToT])
    func cursorToTTrail(bug: InjectedBug?) throws {
        var h = try Self.harness(tHolds: [0, 1], bug: bug)
        h.submitWrite(cluster: 0, byte: 2)
        h.submitRead(cluster: 0)
        h.sweep()
        h.oldReceive()  // seed AD 2: cluster 0 < cursor + 1 cluster: into U
        if bug == nil {
            #expect(h.store.u[0] == [2, 2, 2, 2])
            #expect(h.store.t[0] == [1, 1, 1, 1])
        }
        h.sweep()
        h.oldReceive()
        h.runToCompletion()
        h.checkFinalProperties()
        if bug == nil {
            #expect(h.violations.isEmpty, "\(h.violations)")
        } else {
            #expect(h.violations.contains { if case .staleRead = $0 { true } else { false } }, "\(h.violations)")
            #expect(h.violations.contains(.lostWrite(cluster: 0, expected: [2, 2, 2, 2], got: [1, 1, 1, 1])))
        }
    }

    /// -DBUG_BLOCKING_RECV trail: T holds 0, 1, 2 and New_VM sends nothing;
    /// a sweep that waits for a message after each step never reaches EOF.
    /// The Swift old side never blocks: driven with no requests at all it
    /// sends INTEGRATE_END and New_VM's side answers LAST_UPDATE at once.
    @Test("BUG_BLOCKING_RECV trail: termination with a silent New_VM")
    func silentNewVMTerminates() throws {
        var h = try Self.harness(tHolds: [0, 1, 2], bug: nil)
        h.runToCompletion(maxSteps: 20)
        h.checkFinalProperties()
        #expect(h.violations.isEmpty, "\(h.violations)")
        #expect(h.isFinished)
        #expect(h.sweptClusters == [0, 1, 2])
    }

    /// P4's check has teeth: with INTEGRATE_END lost, nothing can move and
    /// the harness reports the deadlock instead of passing.
    @Test("a lost INTEGRATE_END is reported as a deadlock")
    func lostIntegrateEndDeadlocks() throws {
        var h = try Self.harness(tHolds: [1], bug: nil)
        h.sweep()
        h.sweep()
        #expect(h.old.eofOnT)
        h.dropMessagesToNewSide()
        h.runToCompletion(maxSteps: 20)
        #expect(h.violations == [.deadlock])
        #expect(!h.isFinished)
    }
}
