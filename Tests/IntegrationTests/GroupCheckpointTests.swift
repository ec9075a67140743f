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

        // A group restore refuses while a member runs.
        let again = try cevm.run(["restore", id])
        #expect(!again.ok && again.stderr.contains("running"), "\(again.stderr)")
        for vm in ["tx", "rx"] { #expect(try cevm.run(["stop", vm]).ok) }
        #expect(try cevm.run(["net", "rm", "lab", "--force"]).ok)
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
