import CEVMSystem
import Foundation
import Supervisor
import Testing
import VMStore

@testable import CEVMCommands

/// A `cevm restore` killed at any step leaves a journal that the next
/// restore or run of the VM undoes: the spec and the overlay are the VM's
/// own again, nothing the restore made is left. The steps are the restore's
/// own, in its order; the kill is after each prefix of them.
@Suite struct RestoreJournalTests {
    struct VM {
        let root: String
        let paths: VMPaths

        init(spec: Bool) throws {
            root = "/tmp/cevm-journal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            paths = Home(root: root).vm(try VMName("vm"))
            try Files.makeDirectory(paths.diskDirectory)
            if spec { try Files.writeAtomically(Array("old spec".utf8), to: paths.spec) }
            try Files.writeAtomically(Array("old overlay".utf8), to: paths.overlay)
        }

        func text(_ path: String) -> String? { (try? Files.read(path)).map { String(decoding: $0, as: UTF8.self) } }
    }

    static let stepCount = 9

    /// The restore's first `count` changes, one per step, as Restore.run
    /// makes them (a journal note before each change).
    static func run(_ vm: VM, steps count: Int) throws {
        let paths = vm.paths
        let recordDisk = "\(paths.diskDirectory)/record-r1.qcow2"
        var journal: RestoreJournal?
        for step in 1...count {
            switch step {
            case 1: journal = try RestoreJournal.begin(paths: paths, record: "r1")
            case 2: try journal?.note { $0.madeRecordDisk = recordDisk }
            case 3: try Files.writeAtomically(Array("record disk".utf8), to: recordDisk)
            case 4: try journal?.saveSpec()
            case 5: try Files.writeAtomically(Array("new spec".utf8), to: paths.spec)
            case 6: try journal?.note { $0.movedOverlayAside = true }
            case 7: #expect(rename(paths.overlay, RestoreJournal.aside(paths)) == 0)
            case 8: try journal?.note { $0.overlayIsNew = true }
            default: try Files.writeAtomically(Array("new overlay".utf8), to: paths.overlay)
            }
        }
    }

    @Test(arguments: [true, false])
    func aRestoreKilledAtAnyStepIsUndone(hadSpec: Bool) async throws {
        for killedAfter in 1...Self.stepCount {
            let vm = try VM(spec: hadSpec)
            defer { try? FileManager.default.removeItem(atPath: vm.root) }
            try Self.run(vm, steps: killedAfter)
            #expect(Files.exists(RestoreJournal.path(vm.paths)))

            let said = await RestoreJournal.recover(vm.paths)
            #expect(said == "an interrupted restore of r1 was undone", "killed after step \(killedAfter)")
            #expect(vm.text(vm.paths.spec) == (hadSpec ? "old spec" : nil), "killed after step \(killedAfter)")
            #expect(vm.text(vm.paths.overlay) == "old overlay", "killed after step \(killedAfter)")
            #expect(!Files.exists(RestoreJournal.aside(vm.paths)), "killed after step \(killedAfter)")
            #expect(!Files.exists("\(vm.paths.diskDirectory)/record-r1.qcow2"), "killed after step \(killedAfter)")
            #expect(!Files.exists(RestoreJournal.path(vm.paths)) && !Files.exists(RestoreJournal.savedSpecPath(vm.paths)))
            #expect(await RestoreJournal.recover(vm.paths) == nil, "nothing left to recover")
        }
    }

    @Test func aRestoreWhoseGuestRanIsKept() async throws {
        let vm = try VM(spec: true)
        defer { try? FileManager.default.removeItem(atPath: vm.root) }
        try Self.run(vm, steps: Self.stepCount)
        // The restore's supervisor got the guest running, then the CLI was killed.
        try Files.makeDirectory(vm.paths.runDirectory)
        let timing = RestoreTiming(record: "r1", launched: 1, streamed: 2, loaded: 3, running: 4)
        try Files.writeAtomically(Array(try JSONEncoder().encode(timing)), to: RestoreTiming.path(vm.paths))

        #expect(await RestoreJournal.recover(vm.paths) == "an interrupted restore of r1 had taken effect; its journal is removed")
        #expect(vm.text(vm.paths.spec) == "new spec")
        #expect(vm.text(vm.paths.overlay) == "new overlay")
        #expect(vm.text(RestoreJournal.aside(vm.paths)) == "old overlay", "the overlay before the restore is kept aside, as after any restore")
        #expect(!Files.exists(RestoreJournal.path(vm.paths)))
    }

    @Test func anEarlierRestoresTimingDoesNotPassForThisOne() async throws {
        let vm = try VM(spec: true)
        defer { try? FileManager.default.removeItem(atPath: vm.root) }
        try Files.makeDirectory(vm.paths.runDirectory)
        let timing = RestoreTiming(record: "r1", launched: 1, streamed: 2, loaded: 3, running: 4)
        try Files.writeAtomically(Array(try JSONEncoder().encode(timing)), to: RestoreTiming.path(vm.paths))
        try Self.run(vm, steps: 7)
        #expect(await RestoreJournal.recover(vm.paths) == "an interrupted restore of r1 was undone")
        #expect(vm.text(vm.paths.overlay) == "old overlay")
    }

    @Test func anUnreadableJournalIsLeftAndSaidSo() async throws {
        let vm = try VM(spec: true)
        defer { try? FileManager.default.removeItem(atPath: vm.root) }
        try Files.writeAtomically(Array("{not json".utf8), to: RestoreJournal.path(vm.paths))
        let said = await RestoreJournal.recover(vm.paths)
        #expect(said?.contains("unreadable restore journal") == true)
        #expect(vm.text(vm.paths.overlay) == "old overlay" && vm.text(vm.paths.spec) == "old spec")
    }
}
