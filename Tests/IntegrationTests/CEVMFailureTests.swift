#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Records
import Testing

/// A part of a CEVM checkpoint killed (SIGKILL) at each step, through the
/// supervisor's fault-injection hook (`CEVM_FAULT=<step>:<action>`): the
/// previous committed record always restores, no partial record is left, and
/// the VM keeps running whenever the part killed was not the one running it.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct CEVMFailureTests {
    enum Expect: Equatable { case vmRunsOn, vmLost, either }

    struct Outcome {
        var checkpointOK: Bool
        var stderr: String
    }

    /// Runs a VM with the fault armed, takes a clean stop-and-save record,
    /// then a CEVM checkpoint that meets the fault.
    func scenario(_ fault: String, expect: Expect) throws {
        let cevm = try CEVMHarness()
        let name = "f"
        #expect(try cevm.run(["run", name, "--accel", "tcg"], environment: ["CEVM_FAULT": fault]).ok)
        _ = try cevm.waitForTicks(name, count: 4)
        let first = try cevm.run(["checkpoint", name, "--mechanism", "stop-and-save", "--json"])
        guard first.ok, let object = try JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) as? [String: Any],
            let firstID = (object["manifest"] as? [String: Any])?["id"] as? String
        else { throw HarnessError("first checkpoint failed: \(first.stderr)") }
        let pidBefore = (try cevm.status(name)["status"] as? [String: Any])?["qemuPID"] as? Int

        let attempt = try cevm.run(["checkpoint", name, "--mechanism", "cevm"], timeout: 120)
        // The supervisor settles: it ends a lost VM (or is gone itself).
        var status = try cevm.status(name)
        let settled = try cevm.wait(timeout: 20) {
            status = try cevm.status(name)
            let state = status["state"] as? String
            return state != "stopping" && state != "starting" && (expect != .vmLost || state != "running")
        }
        #expect(settled, "\(fault): the VM's state did not settle: \(status["state"] ?? "?")")
        let state = status["state"] as? String
        let supervisorAlive = status["supervisorAlive"] as? Bool ?? false
        let directory = "\(cevm.home)/vms/\(name)/records"
        let committed = try Files.list(directory).filter { $0 != firstID && Files.exists("\(directory)/\($0)/manifest.json") }
        switch expect {
        case .vmRunsOn:
            #expect(!attempt.ok, "\(fault): the checkpoint must fail")
            #expect(attempt.stderr.contains("checkpoint failed"), "\(fault): \(attempt.stderr)")
            #expect(state == "running" && supervisorAlive, "\(fault): the VM keeps running (\(state ?? "?"))")
            #expect((status["status"] as? [String: Any])?["qemuPID"] as? Int == pidBefore, "\(fault): still on Old_VM")
            let before = try cevm.consoleLines(name).compactMap(Tick.init).count
            _ = try cevm.waitForTicks(name, count: before + 1, timeout: 20)
        case .vmLost:
            #expect(!attempt.ok, "\(fault): the checkpoint must fail")
            #expect(state != "running", "\(fault): the VM was lost with its instance (\(state ?? "?"))")
            #expect(committed.isEmpty, "\(fault): a failed checkpoint committed \(committed)")
        case .either:
            // Committed whole, or not at all; the VM runs exactly when a QEMU runs it.
            if attempt.ok {
                #expect(committed.count == 1, "\(fault): the checkpoint succeeded but committed \(committed)")
                for id in committed { try Record.load(directory: "\(directory)/\(id)").verify() }
            } else {
                #expect(committed.isEmpty, "\(fault): a failed checkpoint committed \(committed)")
            }
            if state == "running" {
                let before = try cevm.consoleLines(name).compactMap(Tick.init).count
                _ = try cevm.waitForTicks(name, count: before + 1, timeout: 20)
            }
        }
        // No QEMU outlives its supervisor, and a VM that is not running has none.
        let running = state == "running" && supervisorAlive
        let count = cevm.waitForQEMUCount(running ? 1 : 0, timeout: 5)
        #expect(count == (running ? 1 : 0), "\(fault): \(count) QEMU process(es) of the VM (state \(state ?? "?"))")
        // Records: the first is whole; any other is committed and whole, never partial.
        try Record.load(directory: "\(directory)/\(firstID)").verify()
        if supervisorAlive {
            for id in try Files.list(directory) {
                #expect(Files.exists("\(directory)/\(id)/manifest.json"), "\(fault): partial record \(id) left behind")
            }
        }
        // Whatever happened, the first record restores and runs, in exactly one QEMU.
        if running { #expect(try cevm.run(["stop", name]).ok) }
        #expect(try cevm.wait(timeout: 10) { (try cevm.status(name)["supervisorAlive"] as? Bool) == false }, "\(fault): the supervisor did not end")
        #expect(cevm.waitForQEMUCount(0, timeout: 5) == 0, "\(fault): a QEMU of the VM outlived it")
        let restore = try cevm.run(["restore", firstID])
        #expect(restore.ok, "\(fault): \(restore.stderr)")
        #expect(cevm.qemuProcesses().count == 1, "\(fault): the restore started \(cevm.qemuProcesses().count) QEMU processes")
        let ticks = try cevm.waitForTicks(name, count: (try cevm.consoleLines(name).compactMap(Tick.init).count) + 3)
        #expect(ticks.suffix(3).allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(fault): \(ticks.suffix(3))")
        // A restart (the restore) removed any uncommitted record.
        for id in try Files.list(directory) {
            #expect(Files.exists("\(directory)/\(id)/manifest.json"), "\(fault): partial record \(id) survived a restart")
        }
        #expect(try cevm.run(["stop", name]).ok)
        #expect(cevm.waitForQEMUCount(0, timeout: 5) == 0)
    }

    /// kill -9 of the supervisor of a running VM: its QEMU dies with it (the
    /// parent-death signal), the VM is `lost`, and while any process of the
    /// VM holds its lock, neither `restore` nor `run` starts another
    /// instance; `stop` ends such a process, and the restore then starts
    /// exactly one QEMU.
    @Test func aKilledSupervisorTakesItsQEMUWithIt() throws {
        let cevm = try CEVMHarness()
        let name = "k"
        #expect(try cevm.run(["run", name, "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks(name, count: 3)
        let first = try cevm.run(["checkpoint", name, "--mechanism", "stop-and-save", "--json"])
        guard first.ok, let object = try JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) as? [String: Any],
            let id = (object["manifest"] as? [String: Any])?["id"] as? String
        else { throw HarnessError("checkpoint failed: \(first.stderr)") }
        #expect(cevm.qemuProcesses().count == 1)
        guard let supervisor = cevm.supervisorPID(name) else { throw HarnessError("no supervisor pid") }
        kill(supervisor, SIGKILL)
        #expect(cevm.waitForQEMUCount(0, timeout: 5) == 0, "the QEMU outlived its killed supervisor")
        #expect(try cevm.wait(timeout: 5) { try cevm.status(name)["state"] as? String == "lost" })

        // A QEMU that holds the VM's lock (inherited, as instances inherit it).
        let paths = "\(cevm.home)/vms/\(name)"
        var lock = try FileLock.tryAcquire("\(paths)/lock")
        guard let descriptor = lock?.descriptor else { throw HarnessError("the lock of a lost VM is held") }
        let holder = try ChildProcess.spawn(
            "qemu-system-x86_64", arguments: ["-machine", "none", "-display", "none", "-nodefaults", "-S", "-name", "\(paths)/run"],
            tiedToParent: true, inherit: [descriptor])
        lock = nil
        #expect(cevm.wait(timeout: 10) { cevm.qemuProcesses() == [holder.pid] })
        #expect(FileLock.isHeld("\(paths)/lock"), "the child keeps the inherited lock")
        for command in [["restore", id], ["run", name]] {
            let refused = try cevm.run(command)
            #expect(!refused.ok, "\(command[0]) started beside a live QEMU of the VM")
            #expect(refused.stderr.contains("QEMU") && refused.stderr.contains("pid \(holder.pid)"), "\(refused.stderr)")
            #expect(cevm.qemuProcesses() == [holder.pid], "\(command[0]) started a QEMU")
        }
        #expect(try cevm.status(name)["state"] as? String == "orphaned")
        #expect(try cevm.run(["stop", name]).ok)
        #expect(holder.exitStatus != nil || cevm.waitForQEMUCount(0, timeout: 5) == 0)

        let restore = try cevm.run(["restore", id])
        #expect(restore.ok, "\(restore.stderr)")
        #expect(cevm.qemuProcesses().count == 1)
        let ticks = try cevm.waitForTicks(name, count: (try cevm.consoleLines(name).compactMap(Tick.init).count) + 2)
        #expect(ticks.suffix(2).allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(ticks.suffix(2))")
        #expect(try cevm.run(["stop", name]).ok)
        #expect(cevm.waitForQEMUCount(0, timeout: 5) == 0)
    }

    @Test func newInstanceKilledBeforeTheSwitchOver() throws {
        try scenario("migrating:kill-new", expect: .vmRunsOn)
    }

    @Test func newInstanceKilledBeforeTheMigration() throws {
        try scenario("prepared:kill-new", expect: .vmRunsOn)
    }

    @Test func oldInstanceKilledDuringTheMigration() throws {
        try scenario("migrating:kill-old", expect: .vmLost)
    }

    @Test func supervisorKilledDuringTheMigration() throws {
        try scenario("migrating:kill-supervisor", expect: .vmLost)
    }

    @Test func supervisorKilledWhileTheDiskIntegrates() throws {
        try scenario("memory-durable:kill-supervisor", expect: .vmLost)
    }

    @Test func newInstanceKilledAfterTheSwitchOver() throws {
        // The VM dies with New_VM; the record of the switch-over may still be
        // completed (memory and disk came from Old_VM), never left partial.
        try scenario("switched-over:kill-new", expect: .either)
    }

    @Test func oldInstanceKilledAfterTheSwitchOverIsHarmless() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "h", "--accel", "tcg"], environment: ["CEVM_FAULT": "switched-over:kill-old"]).ok)
        _ = try cevm.waitForTicks("h", count: 3)
        let attempt = try cevm.run(["checkpoint", "h", "--mechanism", "cevm"])
        #expect(attempt.ok, "\(attempt.stderr)")
        #expect(try cevm.status("h")["state"] as? String == "running")
        _ = try cevm.waitForTicks("h", count: (try cevm.consoleLines("h").compactMap(Tick.init).count) + 3)
        #expect(try cevm.run(["stop", "h"]).ok)
    }

    /// `--on-max-stream cancel`: a migration whose stream passes the cap
    /// (1 MiB: any first round sends more) is cancelled with an error that
    /// says why; Old_VM computes on, no record is left, and neither the
    /// throttling capability nor anything else of the attempt stays set: a
    /// background snapshot (which QEMU refuses while `auto-converge` is on)
    /// and an ordinary CEVM checkpoint follow.
    @Test func aStreamPastItsCapIsCancelledOnRequest() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "c", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("c", count: 3)
        let pidBefore = (try cevm.status("c")["status"] as? [String: Any])?["qemuPID"] as? Int
        let attempt = try cevm.run([
            "checkpoint", "c", "--mechanism", "cevm", "--max-stream", "1M", "--on-max-stream", "cancel", "--auto-converge",
        ])
        #expect(!attempt.ok)
        #expect(attempt.stderr.contains("did not converge") && attempt.stderr.contains("--max-stream 1 MiB"), "\(attempt.stderr)")
        let status = try cevm.status("c")
        #expect(status["state"] as? String == "running")
        #expect((status["status"] as? [String: Any])?["qemuPID"] as? Int == pidBefore, "still on Old_VM")
        let directory = "\(cevm.home)/vms/c/records"
        #expect(((try? Files.list(directory)) ?? []).isEmpty, "no record, not even a partial one")
        let before = try cevm.consoleLines("c").compactMap(Tick.init).count
        let ticks = try cevm.waitForTicks("c", count: before + 3)
        #expect(ticks.suffix(3).allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(ticks.suffix(3))")

        let snapshot = try cevm.run(["checkpoint", "c", "--mechanism", "background-snapshot"])
        #expect(snapshot.ok, "\(snapshot.stderr)")
        let again = try cevm.run(["checkpoint", "c", "--mechanism", "cevm", "--json"])
        #expect(again.ok, "\(again.stderr)")
        #expect(!again.stdout.contains("forcedSwitchOver"))
        #expect(try cevm.run(["stop", "c"]).ok)
    }
}
