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
    enum Expect { case vmRunsOn, vmLost, either }

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
        usleep(500_000)
        let status = try cevm.status(name)
        let state = status["state"] as? String
        let supervisorAlive = status["supervisorAlive"] as? Bool ?? false
        switch expect {
        case .vmRunsOn:
            #expect(!attempt.ok, "\(fault): the checkpoint must fail")
            #expect(attempt.stderr.contains("checkpoint failed"), "\(fault): \(attempt.stderr)")
            #expect(state == "running" && supervisorAlive, "\(fault): the VM keeps running (\(state ?? "?"))")
            #expect((status["status"] as? [String: Any])?["qemuPID"] as? Int == pidBefore, "\(fault): still on Old_VM")
            let before = try cevm.consoleLines(name).compactMap(Tick.init).count
            usleep(1_000_000)
            #expect(try cevm.consoleLines(name).compactMap(Tick.init).count > before, "\(fault): and computes")
        case .vmLost:
            #expect(!attempt.ok, "\(fault): the checkpoint must fail")
            #expect(state != "running", "\(fault): the VM was lost with its instance (\(state ?? "?"))")
        case .either:
            break
        }
        // Records: the first is whole; any other is committed and whole, never partial.
        let directory = "\(cevm.home)/vms/\(name)/records"
        try Record.load(directory: "\(directory)/\(firstID)").verify()
        if supervisorAlive {
            for id in try Files.list(directory) {
                #expect(Files.exists("\(directory)/\(id)/manifest.json"), "\(fault): partial record \(id) left behind")
            }
        }
        // Whatever happened, the first record restores and runs.
        if state == "running" { #expect(try cevm.run(["stop", name]).ok) }
        let detail = try cevm.status(name)["status"] as? [String: Any]
        for key in ["qemuPID", "supervisorPID"] { if let pid = detail?[key] as? Int { kill(pid_t(pid), SIGKILL) } }
        for _ in 0..<100 where (try? cevm.status(name)["supervisorAlive"] as? Bool) == true { usleep(50_000) }
        let restore = try cevm.run(["restore", firstID])
        #expect(restore.ok, "\(fault): \(restore.stderr)")
        let ticks = try cevm.waitForTicks(name, count: (try cevm.consoleLines(name).compactMap(Tick.init).count) + 3)
        #expect(ticks.suffix(3).allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(fault): \(ticks.suffix(3))")
        // A restart (the restore) removed any uncommitted record.
        for id in try Files.list(directory) {
            #expect(Files.exists("\(directory)/\(id)/manifest.json"), "\(fault): partial record \(id) survived a restart")
        }
        #expect(try cevm.run(["stop", name]).ok)
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
