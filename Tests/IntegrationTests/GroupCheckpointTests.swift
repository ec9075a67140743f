#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Records
import Testing
import TestSupport

/// Group checkpoints end to end (DESIGN.md, "A network of VMs"): guests on
/// one cevm network stream checked records over TCP; the group is
/// checkpointed as one cut while the stream runs, every member is stopped,
/// and the group restore lets the stream go on with no gap, duplicate or
/// reset — the receiver's and the sender's recorded states agree, and the
/// frames in flight across the cut are delivered once.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct GroupCheckpointTests {
    /// A receiver and a sender on `net` (addresses 10.9.N.1 and .2).
    func startPair(_ cevm: borrowing CEVMHarness, net: String, rx: String, tx: String, subnet: Int, environment: [String: String] = [:]) throws {
        let started = try cevm.run([
            "run", rx, "--accel", "tcg", "--memory", "192", "--nic", "net=\(net)", "--append", "cevm.ip=10.9.\(subnet).1/24 cevm.net=recv:5000",
        ])
        #expect(started.ok, "\(started.stderr)")
        let sender = try cevm.run(
            [
                "run", tx, "--accel", "tcg", "--memory", "192", "--nic", "net=\(net)", "--append",
                "cevm.ip=10.9.\(subnet).2/24 cevm.net=send:10.9.\(subnet).1:5000 cevm.netrate=150",
            ], environment: environment)
        #expect(sender.ok, "\(sender.stderr)")
    }

    func received(_ cevm: borrowing CEVMHarness, _ rx: String) throws -> Int { try streamProgress(cevm, rx)?["recv"] ?? 0 }

    /// The stream goes on: the receiver counts 150 records past where it is now.
    func expectStreamGoesOn(_ cevm: borrowing CEVMHarness, _ rx: String, _ why: String) throws {
        let now = try received(cevm, rx)
        #expect(try cevm.wait(timeout: 90) { try received(cevm, rx) > now + 150 }, "the stream goes on \(why)")
    }

    /// The same, counting only the receiver's console lines past `afterLine`
    /// (a restored receiver counts from its record, below the live run's last count).
    func expectStreamGoesOn(_ cevm: borrowing CEVMHarness, _ rx: String, afterLine: Int, _ why: String) throws {
        func count() throws -> Int? {
            guard let line = try cevm.consoleLines(rx).dropFirst(afterLine).last(where: { $0.contains("cevm-net recv=") }) else { return nil }
            return line.split(separator: " ").first { $0.hasPrefix("recv=") }.flatMap { Int($0.dropFirst(5)) }
        }
        var start: Int?
        #expect(try cevm.wait(timeout: 60) { start = try count(); return start != nil }, "the restored receiver reports \(why)")
        guard let start else { return }
        #expect(try cevm.wait(timeout: 90) { (try count() ?? 0) > start + 150 }, "the stream goes on \(why)")
    }

    /// No gap, duplicate, damaged record or reset on the receiver; no broken connection on the sender.
    func expectStreamIntact(_ cevm: borrowing CEVMHarness, rx: String, tx: String) throws {
        let last = try #require(try streamProgress(cevm, rx))
        for counter in ["gaps", "dups", "bad", "resets"] {
            #expect(last[counter] == 0, "\(rx): \(counter) = \(last[counter] ?? -1)")
        }
        let broken = try cevm.consoleLines(tx).filter { $0.contains("send broken") || $0.contains("connect-failed") }
        #expect(broken.isEmpty, "\(tx)'s connection never broke: \(broken)")
    }

    func committedGroups(_ cevm: borrowing CEVMHarness) -> [String] {
        ((try? Files.list("\(cevm.home)/groups")) ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }

    @Test func aGroupCheckpointAndRestoreKeepTheStreamWhole() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["net", "create", "lab"]).ok)
        try startPair(cevm, net: "lab", rx: "rx", tx: "tx", subnet: 1)
        #expect(try cevm.wait(timeout: 120) { try received(cevm, "rx") > 150 }, "the stream starts")

        let taken = try cevm.run(["checkpoint", "rx", "tx"])
        #expect(taken.ok, "\(taken.stderr)")
        let id = String(taken.stdout.split(separator: " ").first ?? "")
        #expect(committedGroups(cevm) == [id], "the first word is the group id: \(taken.stdout)")
        let group = try GroupStore(root: cevm.home).load(id: id)
        try group.verify()
        #expect(Set(group.manifest.members.map(\.vm)) == ["rx", "tx"])
        #expect(group.manifest.members.allSatisfy { $0.mechanism == .cevm && $0.networks == ["lab"] })
        for member in group.manifest.members {
            try Record.load(directory: "\(cevm.home)/vms/\(member.vm)/records/\(member.record)").verify()
        }
        try expectStreamGoesOn(cevm, "rx", "after the group checkpoint")

        // --json: the group and each member's record.
        let json = try cevm.run(["checkpoint", "--net", "lab", "--json"])
        #expect(json.ok, "\(json.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect((object["members"] as? [[String: Any]])?.count == 2)
        let secondID = try #require((object["group"] as? [String: Any])?["id"] as? String)
        #expect(committedGroups(cevm) == [id, secondID].sorted())
        let listed = try cevm.run(["records", "--groups"])
        #expect(listed.ok && listed.stdout.contains(id) && listed.stdout.contains(secondID), "\(listed.stdout)\(listed.stderr)")

        // Both stopped, the first group restored: the stream continues from the cut.
        #expect(try cevm.run(["stop", "tx"]).ok)
        #expect(try cevm.run(["stop", "rx"]).ok)
        let restored = try cevm.run(["restore", id])
        #expect(restored.ok, "\(restored.stderr)")
        #expect(restored.stdout.contains("recorded frame(s) delivered"), "\(restored.stdout)")
        for vm in ["rx", "tx"] { #expect(try cevm.status(vm)["state"] as? String == "running") }
        try expectStreamGoesOn(cevm, "rx", "after the group restore")
        try expectStreamIntact(cevm, rx: "rx", tx: "tx")
        let status = try networkStatus(cevm, "lab")
        #expect(status["drops"] as? Int == 0, "the switch dropped frames: \(status)")

        // A group restore refuses while a member runs; copies beside the
        // originals, on a copy of the network, stream on as well.
        let again = try cevm.run(["restore", id])
        #expect(!again.ok && again.stderr.contains("running"), "\(again.stderr)")
        let copies = try cevm.run(["restore", id, "--suffix=-copy"])
        #expect(copies.ok, "\(copies.stderr)")
        #expect(copies.stdout.contains("rx-copy, tx-copy running") || copies.stdout.contains("tx-copy, rx-copy running"), "\(copies.stdout)")
        let copyNet = try networkStatus(cevm, "lab-copy")
        #expect(Set((copyNet["ports"] as? [[String: Any]] ?? []).compactMap { $0["vm"] as? String }) == ["rx-copy", "tx-copy"])
        try expectStreamGoesOn(cevm, "rx-copy", "in the copies")
        try expectStreamIntact(cevm, rx: "rx-copy", tx: "tx-copy")
        try expectStreamGoesOn(cevm, "rx", "in the originals beside their copies")
        for vm in ["tx", "rx", "tx-copy", "rx-copy"] { #expect(try cevm.run(["stop", vm]).ok) }
        #expect(try cevm.run(["net", "rm", "lab", "--force"]).ok)
        #expect(try cevm.run(["net", "rm", "lab-copy", "--force"]).ok)
    }

    @Test func everyMechanismAndPolicyCutsTheGroup() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["net", "create", "lab"]).ok)
        try startPair(cevm, net: "lab", rx: "rx", tx: "tx", subnet: 2)
        #expect(try cevm.wait(timeout: 120) { try received(cevm, "rx") > 150 }, "the stream starts")
        let variants: [[String]] = [
            ["--mechanism", "stop-and-save"], ["--mechanism", "background-snapshot"], ["--policy", "shared"], ["--policy", "dedicated"],
            ["--policy", "alternate"],
        ]
        var last = ""
        for options in variants {
            let taken = try cevm.run(["checkpoint", "--net", "lab"] + options)
            #expect(taken.ok, "\(options): \(taken.stderr)")
            last = String(taken.stdout.split(separator: " ").first ?? "")
            try expectStreamGoesOn(cevm, "rx", "after a group checkpoint \(options)")
        }
        try expectStreamIntact(cevm, rx: "rx", tx: "tx")
        // A second group checkpoint while one runs is refused (one cut per
        // network at a time) and leaves the running one alone: its staging
        // directory is locked against the second's removeUncommitted.
        let running = try cevm.spawn(["checkpoint", "--net", "lab"])
        #expect(try cevm.wait(timeout: 60) { (try networkStatus(cevm, "lab")["cut"]) != nil }, "the cut begins")
        let second = try cevm.run(["checkpoint", "--net", "lab"])
        running.waitUntilExit()
        #expect(running.terminationStatus == 0, "the running group checkpoint commits beside a refused one")
        print("concurrent group checkpoints: the second \(second.ok ? "committed too" : "was refused: \(second.stderr)")")
        // (The first may have ended before the second began: then both commit.)
        #expect(second.ok || second.stderr.contains("cutting this network already"), "\(second.stderr)")
        #expect(((try? Files.list("\(cevm.home)/groups")) ?? []).allSatisfy { !$0.hasPrefix(".") }, "no staging directory is left")
        for id in committedGroups(cevm) { #expect(!Files.exists("\(cevm.home)/groups/\(id)/\(GroupStore.stagingLockName)")) }
        // The stop-and-save group restores as well as the last.
        for id in [committedGroups(cevm).first ?? "", last] {
            for vm in ["tx", "rx"] { #expect(try cevm.run(["stop", vm]).ok) }
            let restored = try cevm.run(["restore", id])
            #expect(restored.ok, "\(id): \(restored.stderr)")
            try expectStreamGoesOn(cevm, "rx", "after restoring \(id)")
            try expectStreamIntact(cevm, rx: "rx", tx: "tx")
        }
        for vm in ["tx", "rx"] { #expect(try cevm.run(["stop", vm]).ok) }
        #expect(try cevm.run(["net", "rm", "lab", "--force"]).ok)
    }

    /// A member whose checkpoint fails: no group record, both VMs running,
    /// the switch's cut aborted (nothing held), the stream whole; a
    /// coordinator killed during the checkpoint: the same.
    @Test func aFailureBeforeTheCommitLeavesNoGroup() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["net", "create", "lab"]).ok)
        try startPair(cevm, net: "lab", rx: "rx", tx: "tx", subnet: 3, environment: ["CEVM_FAULT": "migrating:kill-new"])
        #expect(try cevm.wait(timeout: 120) { try received(cevm, "rx") > 150 }, "the stream starts")

        let unknown = try cevm.run(["checkpoint", "rx", "ghost"])
        #expect(!unknown.ok && unknown.stderr.contains("ghost"), "\(unknown.stderr)")

        let failed = try cevm.run(["checkpoint", "rx", "tx"])
        #expect(!failed.ok, "tx's New_VM is killed: the group must fail")
        #expect(failed.stderr.contains("tx:") && failed.stderr.contains("no group record"), "\(failed.stderr)")
        #expect(committedGroups(cevm).isEmpty)
        #expect(((try? Files.list("\(cevm.home)/groups")) ?? []).isEmpty, "no staging directory is left")
        for vm in ["rx", "tx"] { #expect(try cevm.status(vm)["state"] as? String == "running") }
        #expect(try networkStatus(cevm, "lab")["cut"] == nil, "the cut was aborted")
        try expectStreamGoesOn(cevm, "rx", "after a failed group checkpoint")

        // The coordinator killed while the members migrate: its switch
        // connection closes, the switch aborts the cut.
        let coordinator = try cevm.spawn(["checkpoint", "rx", "--net", "lab", "--mechanism", "stop-and-save"])
        #expect(try cevm.wait(timeout: 20) { (try networkStatus(cevm, "lab")["cut"]) != nil }, "the cut begins")
        kill(coordinator.processIdentifier, SIGKILL)
        coordinator.waitUntilExit()
        #expect(try cevm.wait(timeout: 20) { try networkStatus(cevm, "lab")["cut"] == nil }, "the switch aborts the cut of a coordinator gone")
        #expect(committedGroups(cevm).isEmpty)
        #expect(try cevm.wait(timeout: 60) { try cevm.status("rx")["state"] as? String == "running" && cevm.status("tx")["state"] as? String == "running" })
        try expectStreamGoesOn(cevm, "rx", "after the coordinator died")
        try expectStreamIntact(cevm, rx: "rx", tx: "tx")
        for vm in ["tx", "rx"] { #expect(try cevm.run(["stop", vm]).ok) }
        #expect(try cevm.run(["net", "rm", "lab", "--force"]).ok)
    }

    enum Victim: String, CaseIterable { case theSwitch, aSupervisor, aQEMU }

    /// kill -9 of the switch, of a member's supervisor or of a member's QEMU
    /// while a group checkpoint runs: no new group record, and the earlier
    /// group record restores both members with the stream whole.
    @Test(arguments: Victim.allCases)
    func aKillDuringAGroupCheckpointLeavesTheEarlierGroupRestorable(victim: Victim) throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["net", "create", "lab"]).ok)
        try startPair(cevm, net: "lab", rx: "rx", tx: "tx", subnet: 6)
        #expect(try cevm.wait(timeout: 120) { try received(cevm, "rx") > 150 }, "the stream starts")
        let first = try cevm.run(["checkpoint", "rx", "tx"])
        #expect(first.ok, "\(first.stderr)")
        let earlier = String(first.stdout.split(separator: " ").first ?? "")

        let coordinator = try cevm.spawn(["checkpoint", "--net", "lab"])
        #expect(try cevm.wait(timeout: 20) { (try networkStatus(cevm, "lab")["cut"]) != nil }, "the cut begins")
        switch victim {
        case .theSwitch:
            let pid = try #require(try networkStatus(cevm, "lab")["pid"] as? Int)
            kill(pid_t(pid), SIGKILL)
        case .aSupervisor:
            let pid = cevm.supervisorPID("tx")
            kill(try #require(pid), SIGKILL)
        case .aQEMU:
            let pid = try #require((try cevm.status("tx")["status"] as? [String: Any])?["qemuPID"] as? Int)
            kill(pid_t(pid), SIGKILL)
        }
        coordinator.waitUntilExit()
        #expect(coordinator.terminationStatus != 0, "\(victim): the group checkpoint must fail")
        #expect(committedGroups(cevm) == [earlier], "\(victim): no new group record")

        for vm in ["tx", "rx"] { _ = try cevm.run(["stop", vm]) }
        #expect(cevm.waitForQEMUCount(0, timeout: 20) == 0)
        let restored = try cevm.run(["restore", earlier])
        #expect(restored.ok, "\(victim): \(restored.stderr)")
        try expectStreamGoesOn(cevm, "rx", "after restoring the earlier group (\(victim))")
        try expectStreamIntact(cevm, rx: "rx", tx: "tx")
        for vm in ["tx", "rx"] { #expect(try cevm.run(["stop", vm]).ok) }
        #expect(try cevm.run(["net", "rm", "lab", "--force"]).ok)
    }

    /// A kill -9 at a later phase of a group checkpoint, and what it must leave.
    struct LateKill: CustomTestStringConvertible, Sendable {
        enum Group: Sendable { case none, whole, either }
        var phase: String
        var victim: String
        /// `CEVM_FAULT` of the sender's (tx's) supervisor: the member fault.
        var memberFault: String?
        /// `CEVM_GROUP_FAULT` of the coordinator.
        var groupFault: String?
        var group: Group
        /// The sender runs on afterwards (else its VM is lost).
        var txRuns: Bool
        /// The coordinator itself dies: its staging directory stays until the next group checkpoint.
        var coordinatorDies = false
        /// Words the coordinator's error must hold when it fails.
        var error: [String] = []
        var testDescription: String { "\(phase): \(victim)" }
    }

    static let lateKills: [LateKill] = [
        // tx has switched over (its cut, its port promoted); rx cuts on its own, before or after.
        LateKill(
            phase: "one member cut", victim: "its supervisor", memberFault: "switched-over:kill-supervisor", group: .none, txRuns: false,
            error: ["tx:", "no group record", "kept as single-VM records: rx"]),
        LateKill(phase: "one member cut", victim: "its New_VM QEMU", memberFault: "switched-over:kill-new", group: .either, txRuns: false),
        // Every member's record committed, no cut ended.
        LateKill(phase: "members done", victim: "the coordinator", groupFault: "members-done:kill-coordinator", group: .none, txRuns: true, coordinatorDies: true),
        LateKill(
            phase: "members done", victim: "the switch", groupFault: "members-done:kill-switch", group: .none, txRuns: true,
            error: ["network lab", "no group record", "kept as single-VM records: rx", "tx"]),
        LateKill(phase: "members done", victim: "a member's QEMU", groupFault: "members-done:kill-member-qemu", group: .whole, txRuns: false),
        LateKill(
            phase: "members done", victim: "a member's supervisor", groupFault: "members-done:kill-member-supervisor", group: .whole,
            txRuns: false),
        // The channel state written into the staging directory, the manifest not committed.
        LateKill(phase: "channel saved", victim: "the coordinator", groupFault: "channel-saved:kill-coordinator", group: .none, txRuns: true, coordinatorDies: true),
        LateKill(phase: "channel saved", victim: "the switch", groupFault: "channel-saved:kill-switch", group: .whole, txRuns: true),
        LateKill(phase: "channel saved", victim: "a member's supervisor", groupFault: "channel-saved:kill-member-supervisor", group: .whole, txRuns: false),
        LateKill(phase: "channel saved", victim: "a member's QEMU", groupFault: "channel-saved:kill-member-qemu", group: .whole, txRuns: false),
    ]

    /// The committed records of `vm` (`cevm records list NAME --json`).
    func recordIDs(_ cevm: borrowing CEVMHarness, _ vm: String) throws -> [String] {
        let listed = try cevm.run(["records", "list", vm, "--json"])
        guard listed.ok, let array = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]] else {
            throw HarnessError("records list \(vm): \(listed.stderr)")
        }
        return array.compactMap { ($0["manifest"] as? [String: Any])?["id"] as? String }
    }

    func uncommittedGroups(_ cevm: borrowing CEVMHarness) -> [String] {
        ((try? Files.list("\(cevm.home)/groups")) ?? []).filter { $0.hasPrefix(".") }.sorted()
    }

    /// kill -9 of the switch, a member's supervisor, a member's QEMU or the
    /// coordinator at the later phases of a group checkpoint (a member cut
    /// and another maybe not; every member's record committed; the channel
    /// state saved, the manifest not yet committed): no new group record or
    /// a whole one; a member record committed for a group that failed stays
    /// as a single-VM record; no VM runs in two QEMUs; the earlier group
    /// restores both members with the stream whole.
    @Test(arguments: lateKills)
    func aKillAtALaterPhaseLeavesNoGroupOrAWholeOne(_ kill: LateKill) throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["net", "create", "lab"]).ok)
        try startPair(cevm, net: "lab", rx: "rx", tx: "tx", subnet: 8, environment: kill.memberFault.map { ["CEVM_FAULT": $0] } ?? [:])
        #expect(try cevm.wait(timeout: 120) { try received(cevm, "rx") > 150 }, "the stream starts")
        // The earlier group: stop-and-save, which the member fault (CEVM only) leaves alone.
        let first = try cevm.run(["checkpoint", "rx", "tx", "--mechanism", "stop-and-save"])
        #expect(first.ok, "\(first.stderr)")
        let earlier = String(first.stdout.split(separator: " ").first ?? "")
        #expect(committedGroups(cevm) == [earlier])
        let before = ["rx": try recordIDs(cevm, "rx"), "tx": try recordIDs(cevm, "tx")]

        let attempt = try cevm.run(
            ["checkpoint", "rx", "tx", "--mechanism", "cevm"], environment: kill.groupFault.map { ["CEVM_GROUP_FAULT": $0] } ?? [:],
            timeout: 300)
        let groups = committedGroups(cevm)
        let made = groups.filter { $0 != earlier }
        #expect(groups.contains(earlier), "\(kill): the earlier group is kept")
        #expect(made.count <= 1, "\(kill): \(made)")
        print("late kill, \(kill.testDescription): exit \(attempt.status), new group \(made), \(attempt.stderr.split(separator: "\n").joined(separator: " | "))")
        if kill.groupFault != nil {
            #expect(attempt.stderr.contains("fault injection (CEVM_GROUP_FAULT)"), "\(kill): the fault was not met: \(attempt.stderr)")
        }

        // No group, or a whole one: its members' records exist and verify, its channel file too.
        switch (kill.group, made.isEmpty) {
        case (.none, false): Issue.record("\(kill): a group was committed: \(made)")
        case (.whole, true): Issue.record("\(kill): no group was committed: \(attempt.stderr)")
        default: break
        }
        if let id = made.first {
            let group = try GroupStore(root: cevm.home).load(id: id)
            try group.verify()
            #expect(Set(group.manifest.members.map(\.vm)) == ["rx", "tx"])
            #expect(group.manifest.networks.map(\.name) == ["lab"])
            for network in group.manifest.networks { #expect(Files.exists(group.channelPath(network))) }
            for member in group.manifest.members {
                try Record.load(directory: "\(cevm.home)/vms/\(member.vm)/records/\(member.record)").verify()
            }
            let listed = try cevm.run(["records", "--groups"])
            #expect(listed.ok && listed.stdout.contains(id), "\(listed.stdout)\(listed.stderr)")
            if !kill.coordinatorDies { #expect(attempt.ok, "\(kill): a committed group is a success: \(attempt.stderr)") }
            // A success that left a member's supervisor dead says so.
            if attempt.ok, let pid = cevm.supervisorPID("tx"), Glibc.kill(pid, 0) != 0 {
                #expect(attempt.stderr.contains("warning: VM 'tx' no longer runs"), "\(kill): \(attempt.stderr)")
            }
        } else {
            #expect(!attempt.ok, "\(kill): no group, yet the coordinator succeeded: \(attempt.stdout)")
            for word in kill.error { #expect(attempt.stderr.contains(word), "\(kill): the error names '\(word)': \(attempt.stderr)") }
            // A member whose own record committed keeps it as a single-VM record.
            let grouped = Set(groups.flatMap { id in (try? GroupStore(root: cevm.home).load(id: id).manifest.members.map(\.record)) ?? [] })
            for vm in ["rx", "tx"] {
                let new = try recordIDs(cevm, vm).filter { !(before[vm] ?? []).contains($0) }
                let mustKeep = kill.memberFault == nil || vm == "rx"
                if mustKeep { #expect(new.count == 1, "\(kill): \(vm) keeps its record of the failed group: \(new)") }
                #expect(new.count <= 1, "\(kill): \(vm): \(new)")
                for id in new {
                    #expect(!grouped.contains(id))
                    try Record.load(directory: "\(cevm.home)/vms/\(vm)/records/\(id)").verify()
                    if mustKeep { #expect(attempt.stderr.contains(id) || kill.coordinatorDies, "\(kill): the error lists \(vm)'s record \(id)") }
                }
            }
        }

        // Staging: the coordinator's own failure path removes it; a coordinator killed leaves it to the next group checkpoint.
        if kill.coordinatorDies {
            #expect(uncommittedGroups(cevm).count == 1, "\(kill): the dead coordinator's staging directory: \(uncommittedGroups(cevm))")
        } else {
            #expect(uncommittedGroups(cevm).isEmpty, "\(kill): staging left: \(uncommittedGroups(cevm))")
        }

        // Each VM settles: rx runs on; tx runs on or is lost with its QEMU, never in two.
        #expect(try cevm.wait(timeout: 60) { try cevm.status("rx")["state"] as? String == "running" }, "\(kill): rx runs on")
        var txState = ""
        let settled = try cevm.wait(timeout: 60) {
            txState = try cevm.status("tx")["state"] as? String ?? ""
            return kill.txRuns ? txState == "running" : (txState != "running" && txState != "stopping")
        }
        #expect(settled, "\(kill): tx settles (\(txState))")
        let running = kill.txRuns ? 2 : 1
        #expect(cevm.waitForQEMUCount(running, timeout: 30) == running, "\(kill): \(cevm.qemuProcesses().count) QEMU processes")
        for vm in kill.txRuns ? ["rx", "tx"] : ["rx"] {
            let pid = (try cevm.status(vm)["status"] as? [String: Any])?["qemuPID"] as? Int
            #expect(pid.map { cevm.qemuProcesses().contains(pid_t($0)) } == true, "\(kill): \(vm)'s QEMU \(pid ?? -1) runs")
        }
        if kill.coordinatorDies {
            #expect(try cevm.wait(timeout: 20) { try networkStatus(cevm, "lab")["cut"] == nil }, "\(kill): the switch ended or aborted the cut")
        }

        // Both stopped, the earlier group restores both; the stream goes on whole.
        for vm in ["tx", "rx"] { _ = try cevm.run(["stop", vm]) }
        #expect(cevm.waitForQEMUCount(0, timeout: 30) == 0)
        let linesBefore = try cevm.consoleLines("rx").count
        let restored = try cevm.run(["restore", earlier])
        #expect(restored.ok, "\(kill): \(restored.stderr)")
        #expect(cevm.waitForQEMUCount(2, timeout: 10) == 2, "\(kill): the restore runs \(cevm.qemuProcesses().count) QEMU processes")
        try expectStreamGoesOn(cevm, "rx", afterLine: linesBefore, "after restoring the earlier group (\(kill))")
        try expectStreamIntact(cevm, rx: "rx", tx: "tx")
        // The restarts removed every uncommitted member record.
        for vm in ["rx", "tx"] {
            for id in try Files.list("\(cevm.home)/vms/\(vm)/records") {
                #expect(Files.exists("\(cevm.home)/vms/\(vm)/records/\(id)/manifest.json"), "\(kill): partial record \(vm)/\(id) survived a restart")
            }
        }
        // A group committed despite the kill restores as well.
        if let id = made.first {
            for vm in ["tx", "rx"] { #expect(try cevm.run(["stop", vm]).ok) }
            let lines = try cevm.consoleLines("rx").count
            let again = try cevm.run(["restore", id])
            #expect(again.ok, "\(kill): \(again.stderr)")
            #expect(cevm.waitForQEMUCount(2, timeout: 10) == 2)
            try expectStreamGoesOn(cevm, "rx", afterLine: lines, "after restoring the group made despite the kill (\(kill))")
            try expectStreamIntact(cevm, rx: "rx", tx: "tx")
        }

        // The next group checkpoint removes what a dead coordinator left.
        if kill.coordinatorDies {
            let next = try cevm.run(["checkpoint", "--net", "lab"])
            #expect(next.ok, "\(next.stderr)")
            #expect(uncommittedGroups(cevm).isEmpty, "\(kill): staging left after the next group checkpoint: \(uncommittedGroups(cevm))")
        }
        for vm in ["tx", "rx"] { #expect(try cevm.run(["stop", vm]).ok) }
        #expect(try cevm.run(["net", "rm", "lab", "--force"]).ok)
    }

    /// `cevm schedule --net`: the network's switch takes group checkpoints
    /// at the interval and keeps the newest; `--off` stops them.
    @Test func aNetworkScheduleKeepsTheNewestGroups() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["net", "create", "lab"]).ok)
        try startPair(cevm, net: "lab", rx: "rx", tx: "tx", subnet: 7)
        #expect(try cevm.wait(timeout: 120) { try received(cevm, "rx") > 150 }, "the stream starts")
        let set = try cevm.run(["schedule", "--net", "lab", "--every", "5s", "--keep", "2"])
        #expect(set.ok, "\(set.stderr)")
        func taken() throws -> [[String: Any]] {
            let shown = try cevm.run(["schedule", "--net", "lab", "--json"])
            let object = try JSONSerialization.jsonObject(with: Data(shown.stdout.utf8), options: .fragmentsAllowed) as? [String: Any]
            return (object?["recent"] as? [[String: Any]] ?? []).filter { $0["ok"] as? Bool == true }
        }
        #expect(try cevm.wait(timeout: 120) { try taken().count >= 3 }, "three scheduled group checkpoints")
        let groups = committedGroups(cevm)
        let newest = try taken().compactMap { $0["group"] as? String }.suffix(2)
        #expect(groups.count == 2 && groups == Array(newest).sorted(), "kept \(groups), newest \(newest)")
        for id in groups {
            for member in try GroupStore(root: cevm.home).load(id: id).manifest.members {
                #expect(Files.exists("\(cevm.home)/vms/\(member.vm)/records/\(member.record)/manifest.json"))
            }
        }
        #expect(try cevm.run(["schedule", "--net", "lab", "--off"]).ok)
        Thread.sleep(forTimeInterval: 8)
        #expect(committedGroups(cevm) == groups, "no group after --off")
        #expect(try cevm.run(["schedule", "--net", "lab"]).stdout.contains("no group schedule"))
        try expectStreamIntact(cevm, rx: "rx", tx: "tx")
        for vm in ["tx", "rx"] { #expect(try cevm.run(["stop", vm]).ok) }
        #expect(try cevm.run(["net", "rm", "lab", "--force"]).ok)
    }

    /// Four guests, two streams, one network, one group.
    @Test func fourGuestsInTwoPairs() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["net", "create", "lab"]).ok)
        try startPair(cevm, net: "lab", rx: "rx1", tx: "tx1", subnet: 4)
        try startPair(cevm, net: "lab", rx: "rx2", tx: "tx2", subnet: 5)
        #expect(try cevm.wait(timeout: 180) { try received(cevm, "rx1") > 100 && received(cevm, "rx2") > 100 }, "both streams start")
        let taken = try cevm.run(["checkpoint", "--net", "lab"], timeout: 400)
        #expect(taken.ok, "\(taken.stderr)")
        let id = String(taken.stdout.split(separator: " ").first ?? "")
        #expect(try GroupStore(root: cevm.home).load(id: id).manifest.members.count == 4)
        for vm in ["tx1", "tx2", "rx1", "rx2"] { #expect(try cevm.run(["stop", vm]).ok) }
        let restored = try cevm.run(["restore", id], timeout: 400)
        #expect(restored.ok, "\(restored.stderr)")
        for (rx, tx) in [("rx1", "tx1"), ("rx2", "tx2")] {
            try expectStreamGoesOn(cevm, rx, "after the restore of four")
            try expectStreamIntact(cevm, rx: rx, tx: tx)
        }
        for vm in ["tx1", "tx2", "rx1", "rx2"] { #expect(try cevm.run(["stop", vm]).ok) }
        #expect(try cevm.run(["net", "rm", "lab", "--force"]).ok)
    }
}
