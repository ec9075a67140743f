#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Records
import Testing

/// The disk manager under a real guest: QEMU's drive is the manager's NBD
/// export, checkpoints cut the disk while the guest keeps writing, and the
/// guest's own disk checks (every tick reads back the previous tick's
/// records) see no corruption, before and after a restore.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct DiskManagerEndToEndTests {
    /// 32 records (128 KiB, O_DIRECT, fdatasync) every 50 ms.
    static let heavyDisk = ["--append", "cevm.disk=32 cevm.tick=50"]

    func checkpoint(_ cevm: borrowing CEVMHarness, _ name: String, _ extra: [String] = []) throws -> [String: Any] {
        let result = try cevm.run(["checkpoint", name, "--json"] + extra)
        guard result.ok, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
            let manifest = object["manifest"] as? [String: Any]
        else { throw HarnessError("checkpoint failed: \(result.stderr)") }
        return manifest
    }

    func supervisorLog(_ cevm: borrowing CEVMHarness, _ name: String) -> String {
        (try? Files.readString("\(cevm.home)/vms/\(name)/supervisor.log")) ?? ""
    }

    @Test func checkpointsOfADiskHeavyGuestIntegrateWhileItWrites() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "heavy", "--accel", "tcg"] + Self.heavyDisk).ok)
        _ = try cevm.waitForTicks("heavy", count: 10)
        // The drive is the manager's export, not a file.
        let cmdline = try Files.readString("/proc/\(try cevm.status("heavy")["status"].flatMap { ($0 as? [String: Any])?["qemuPID"] as? Int } ?? 0)/cmdline")
        #expect(cmdline.contains("driver=nbd") && cmdline.contains("nbd.sock"), "QEMU's drive: \(cmdline)")

        var manifests: [[String: Any]] = []
        for i in 0..<4 {
            // Both ways the disk is cut: stop-and-save integrates after `cont`, CEVM after the switch-over.
            let mechanism = i % 2 == 0 ? ["--mechanism", "stop-and-save"] : []
            manifests.append(try checkpoint(cevm, "heavy", mechanism + (i == 3 ? ["--full"] : [])))
            // The guest writes on between checkpoints.
            _ = try cevm.waitForTicks("heavy", count: try cevm.consoleLines("heavy").compactMap(Tick.init).count + 1, timeout: 20)
        }
        let kinds = manifests.map { ($0["disk"] as? [String: Any])?["kind"] as? String ?? "" }
        #expect(kinds == ["full", "incremental", "incremental", "full"], "\(kinds)")
        #expect(manifests[1]["parent"] as? String == manifests[0]["id"] as? String)
        #expect(manifests[2]["parent"] as? String == manifests[1]["id"] as? String)
        // The guest wrote while the manager integrated.
        let log = supervisorLog(cevm, "heavy")
        let served = log.split(separator: "\n").compactMap { line -> Int? in
            guard let range = line.range(of: " guest requests meanwhile") else { return nil }
            return Int(line[..<range.lowerBound].split(separator: " ").last ?? "")
        }
        #expect(served.count == 4, "\(log)")
        // Whether a guest request lands inside a 40-90 ms integration is a
        // matter of timing here; IntegrationRunTests proves the overlap
        // deterministically on real qcow2 files.

        let ticks = try cevm.waitForTicks("heavy", count: (try cevm.consoleLines("heavy").compactMap(Tick.init).count) + 10)
        #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "the guest saw corruption: \(ticks.filter { $0.disk != "ok" }.prefix(3))")
        #expect(!(try cevm.consoleLines("heavy").contains { $0.contains("cevm-error") }))

        // Every record is a qcow2 chain qemu-img accepts; restore the
        // incremental one in the middle and the guest's checks still pass.
        for manifest in manifests {
            let id = manifest["id"] as? String ?? ""
            let check = try cevm.run(["disk", "verify", "\(cevm.home)/vms/heavy/records/\(id)/disk.qcow2"])
            #expect(check.ok, "\(id): \(check.stdout) \(check.stderr)")
        }
        #expect(try cevm.run(["stop", "heavy"]).ok)
        let middle = manifests[2]["id"] as? String ?? ""
        #expect(try cevm.run(["restore", middle, "--name", "again"]).ok)
        let restored = try cevm.waitForTicks("again", count: 8)
        #expect(restored.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(restored)")
        #expect(try cevm.run(["stop", "again"]).ok)
    }

    /// kill -9 of the supervisor (and so of the disk manager) while it
    /// integrates: the previous record stays restorable, the next start of
    /// the VM finishes the merge, and no partial record is left.
    @Test func killDuringIntegrationKeepsThePreviousRecordAndRecovers() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "crash", "--accel", "tcg"] + Self.heavyDisk).ok)
        _ = try cevm.waitForTicks("crash", count: 6)
        let first = try checkpoint(cevm, "crash", ["--mechanism", "stop-and-save"])
        let firstID = first["id"] as? String ?? ""
        // Start a second checkpoint and kill everything as soon as the
        // manager has written its journal (the integration is running).
        let journal = "\(cevm.home)/vms/crash/disk/integration.json"
        let detail = try cevm.status("crash")["status"] as? [String: Any]
        let pids = ["supervisorPID", "qemuPID"].compactMap { detail?[$0] as? Int }
        let second = try cevm.spawn(["checkpoint", "crash", "--mechanism", "stop-and-save"])
        var sawJournal = false
        for _ in 0..<2000 where !sawJournal {
            sawJournal = Files.exists(journal)
            if !sawJournal { usleep(1000) }
        }
        for pid in pids { kill(pid_t(pid), SIGKILL) }
        second.waitUntilExit()
        #expect(second.terminationStatus != 0, "the interrupted checkpoint reports a failure")
        #expect(sawJournal, "the second checkpoint never reached its disk cut")
        #expect(try cevm.wait(timeout: 5) { (try cevm.status("crash")["supervisorAlive"] as? Bool) == false }, "the supervisor did not end")
        #expect(cevm.waitForQEMUCount(0, timeout: 5) == 0, "a QEMU of the VM outlived its supervisor")

        // The committed record is whole and restorable.
        try Record.load(directory: "\(cevm.home)/vms/crash/records/\(firstID)").verify()
        // Starting the VM again recovers the disk directory first.
        #expect(try cevm.run(["run", "crash"]).ok)
        let log = (try? Files.readString("\(cevm.home)/vms/crash/supervisor.log")) ?? ""
        #expect(!sawJournal || log.contains("disk: finished the merge") || log.contains("journal removed"), "\(log)")
        #expect(!Files.exists(journal))
        let records = try Files.list("\(cevm.home)/vms/crash/records")
        #expect(records == [firstID], "only the committed record remains: \(records)")
        _ = try cevm.waitForTicks("crash", count: 3)
        #expect(try cevm.run(["stop", "crash"]).ok)
        #expect(try cevm.run(["restore", firstID, "--name", "back"]).ok)
        let ticks = try cevm.waitForTicks("back", count: 5)
        #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" })
        #expect(try cevm.run(["stop", "back"]).ok)
    }
}
