#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Records
import Testing

/// The CEVM mechanism end to end: the VM moves to a new pinned QEMU at each
/// checkpoint and keeps computing; every record restores to the exact state
/// the new instance continued from.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct CEVMCheckpointTests {
    func checkpoint(_ cevm: borrowing CEVMHarness, _ name: String, _ extra: [String]) throws -> [String: Any] {
        let result = try cevm.run(["checkpoint", name, "--json"] + extra)
        guard result.ok, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
            let manifest = object["manifest"] as? [String: Any]
        else { throw HarnessError("checkpoint \(extra) failed: \(result.stderr)") }
        return manifest
    }

    func qemuPID(_ cevm: borrowing CEVMHarness, _ name: String) throws -> Int32 {
        guard let pid = (try cevm.status(name)["status"] as? [String: Any])?["qemuPID"] as? Int else {
            throw HarnessError("no qemu pid for \(name)")
        }
        return Int32(pid)
    }

    func killHard(_ cevm: borrowing CEVMHarness, _ name: String) throws {
        let detail = try cevm.status(name)["status"] as? [String: Any]
        for key in ["qemuPID", "supervisorPID"] {
            if let pid = detail?[key] as? Int { kill(pid_t(pid), SIGKILL) }
        }
        #expect(try cevm.wait(timeout: 5) { (try cevm.status(name)["supervisorAlive"] as? Bool) == false }, "the supervisor did not end")
        #expect(cevm.waitForQEMUCount(0, timeout: 5) == 0, "a QEMU of the VM outlived its supervisor")
    }

    /// Ticks the VM printed after `wall` (host time).
    func ticks(_ cevm: borrowing CEVMHarness, _ name: String, after wall: Double) throws -> [Tick] {
        try cevm.consoleLines(name).compactMap(Tick.init).filter { (Timestamp.parse($0.time) ?? 0) > wall }
    }

    @Test func checkpointsUnderEachPolicyMoveTheVMAndRestoreExactly() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "mover", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("mover", count: 5)
        let available = try Affinity.available()
        let policies = ["shared", "dedicated", "alternate", "alternate"]
        var taken: [(manifest: [String: Any], continued: [Tick])] = []
        var newSets: [String] = []
        for policy in policies {
            let before = try qemuPID(cevm, "mover")
            let manifest = try checkpoint(cevm, "mover", ["--mechanism", "cevm", "--policy", policy])
            #expect(manifest["mechanism"] as? String == "cevm")
            let placement = manifest["placement"] as? [String: Any] ?? [:]
            #expect(placement["policy"] as? String == policy)
            let newSet = placement["newInstance"] as? String ?? "?"
            let oldSet = placement["oldSide"] as? String ?? "?"
            newSets.append(newSet)

            // A new QEMU process runs the VM; the old one is gone.
            let after = try qemuPID(cevm, "mover")
            #expect(after != before, "\(policy): the VM moved to a new instance")
            #expect(kill(before, 0) != 0, "\(policy): Old_VM ended")
            // Every thread of New_VM is pinned to its set, as the kernel reports it.
            let lists = try Affinity.allowedLists(of: after)
            #expect(!lists.isEmpty && Set(lists.values) == [newSet], "\(policy): New_VM threads \(lists), expected \(newSet)")
            // The old side ran where the policy put it (read back from the kernel).
            let observed = placement["observed"] as? [String: String] ?? [:]
            for part in ["tee", "Old_VM"] { #expect(observed[part] == oldSet, "\(policy): \(part) on \(observed[part] ?? "?"), expected \(oldSet)") }
            // During the pre-copy, Old_VM's migration thread and New_VM (receiving)
            // ran on the pre-copy set, away from the set the guest computed on.
            let precopy = placement["precopy"] as? String ?? "?"
            let guestSet = placement["oldInstance"] as? String ?? "?"
            for part in ["migration", "precopy:New_VM"] {
                #expect(observed[part] == precopy, "\(policy): \(part) on \(observed[part] ?? "?") during the pre-copy, expected \(precopy)")
            }
            if available.cpus.count >= 2 && policy != "shared" {
                #expect(newSet != oldSet, "\(policy): checkpointing is kept off the VM's CPUs")
                #expect(precopy != guestSet, "\(policy): the pre-copy is kept off the guest's CPUs")
                #expect(observed["precopy:Old_VM"]?.contains(guestSet) == true, "\(policy): Old_VM computed on \(guestSet)")
            }
            let timings = manifest["timings"] as? [String: Any] ?? [:]
            let migration = manifest["migration"] as? [String: Any] ?? [:]
            let downtime = migration["downtimeMs"] as? Double ?? -1
            let pause = timings["guestPauseMs"] as? Double ?? -1
            // QEMU starts its downtime clock a little before it emits STOP
            // (and rounds it to whole ms); the pause runs STOP to RESUME.
            #expect(downtime >= 0 && pause >= downtime - 5 && pause <= downtime + 50, "\(policy): pause \(pause) ms vs downtime \(downtime) ms")
            #expect((timings["consoleGapMs"] as? Double ?? 0) > 0, "the host saw the pause in the console")
            #expect(timings["overlapMs"] as? Double != nil)
            let resumedAt = Timestamp.parse(timings["resumedAt"] as? String ?? "") ?? 0
            var continued: [Tick] = []
            _ = try cevm.wait(timeout: 20) {
                continued = try ticks(cevm, "mover", after: resumedAt)
                return continued.count >= 3
            }
            #expect(continued.count >= 3 && continued.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(policy): \(continued)")
            taken.append((manifest, continued))
        }
        if available.cpus.count >= 2 {
            #expect(newSets[2] != newSets[3], "alternate moves the VM between the two sets: \(newSets)")
        }
        // No gap and no repeat in the guest's counter across four switch-overs.
        let all = try cevm.consoleLines("mover").compactMap(Tick.init).map(\.counter)
        #expect(all == Array(1...(all.last ?? 1)), "the counter runs on without a gap")

        // Lose the VM; each record restores to the state New_VM continued from.
        try killHard(cevm, "mover")
        for (index, entry) in taken.enumerated() {
            let id = entry.manifest["id"] as? String ?? ""
            let name = "back\(index)"
            let started = Date().timeIntervalSince1970
            #expect(try cevm.run(["restore", id, "--name", name]).ok)
            var restored: [Tick] = []
            _ = try cevm.wait(timeout: 20) {
                restored = try ticks(cevm, name, after: started)
                return restored.count >= 3
            }
            #expect(restored.count >= 3)
            #expect(restored.allSatisfy { $0.mem == "ok" && $0.disk == "ok" })
            let first = entry.continued.first
            #expect(restored.first?.counter == first?.counter, "\(id): restore continues where New_VM did")
            #expect(restored.first?.sum == first?.sum, "\(id): with the same memory")
            #expect(try cevm.run(["stop", name]).ok)
        }
    }

    @Test func everyMechanismOnOneVMProducesRestorableRecords() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "mix", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("mix", count: 4)
        var manifests: [[String: Any]] = []
        for mechanism in ["stop-and-save", "cevm", "background-snapshot"] {
            manifests.append(try checkpoint(cevm, "mix", ["--mechanism", mechanism]))
            // The guest runs on between checkpoints.
            _ = try cevm.waitForTicks("mix", count: try cevm.consoleLines("mix").compactMap(Tick.init).count + 1, timeout: 20)
        }
        #expect(manifests.map { $0["mechanism"] as? String ?? "" } == ["stop-and-save", "cevm", "background-snapshot"])
        let background = manifests[2]
        #expect((background["migration"] as? [String: Any])?["capabilities"] as? [String: Bool] == ["background-snapshot": true])
        // A CEVM checkpoint after a background snapshot is an ordinary migration again.
        manifests.append(try checkpoint(cevm, "mix", ["--mechanism", "cevm"]))
        let records = try cevm.run(["records", "mix"])
        #expect(records.ok)
        #expect(try cevm.run(["stop", "mix"]).ok)
        for (index, manifest) in manifests.enumerated() {
            let id = manifest["id"] as? String ?? ""
            let name = "m\(index)"
            #expect(try cevm.run(["restore", id, "--name", name]).ok, "\(id)")
            let ticks = try cevm.waitForTicks(name, count: 3)
            let errors = try cevm.consoleLines(name).filter { $0.contains("cevm-error") }.prefix(6)
            #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(manifest["mechanism"] ?? ""): \(ticks) \(errors)")
            #expect(try cevm.run(["stop", name]).ok)
        }
    }

    @Test func cevmOptionsAreCheckedBeforeAnythingHappens() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "opt", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("opt", count: 2)
        let pid = try qemuPID(cevm, "opt")
        let misuse = try cevm.run(["checkpoint", "opt", "--mechanism", "stop-and-save", "--policy", "alternate"])
        #expect(!misuse.ok && misuse.stderr.contains("apply to --mechanism cevm"), "\(misuse.stderr)")
        let badSet = try cevm.run(["checkpoint", "opt", "--mechanism", "cevm", "--cpus", "999"])
        #expect(!badSet.ok && badSet.stderr.contains("--cpus"), "\(badSet.stderr)")
        let overlap = try cevm.run(["checkpoint", "opt", "--mechanism", "cevm", "--policy", "dedicated", "--cpus", "0", "--checkpoint-cpus", "0"])
        #expect(!overlap.ok && overlap.stderr.contains("overlap"), "\(overlap.stderr)")
        let capElsewhere = try cevm.run(["checkpoint", "opt", "--mechanism", "background-snapshot", "--max-stream", "1G"])
        #expect(!capElsewhere.ok && capElsewhere.stderr.contains("apply to --mechanism cevm"), "\(capElsewhere.stderr)")
        let badCap = try cevm.run(["checkpoint", "opt", "--max-stream", "0"])
        #expect(!badCap.ok && badCap.stderr.contains("--max-stream"), "\(badCap.stderr)")
        #expect(try qemuPID(cevm, "opt") == pid, "a refused checkpoint leaves the VM where it was")
        #expect(try cevm.run(["records", "opt", "--json"]).stdout.contains("[]") || (try cevm.run(["records", "opt"]).stdout.split(separator: "\n").count <= 1))
        #expect(try cevm.run(["stop", "opt"]).ok)
    }

    /// A migration whose stream passes `--max-stream` (here 1 MiB: any
    /// migration's first round sends more) is switched over by force: the
    /// record says so, the guest computes on, and the record restores to
    /// the state New_VM continued from. Without the option the default cap
    /// is recorded and this quiet guest's migration converges by itself.
    @Test func aStreamPastItsCapForcesTheSwitchOver() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "cap", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("cap", count: 4)
        let forcedManifest = try checkpoint(cevm, "cap", ["--mechanism", "cevm", "--max-stream", "1M"])
        let migration = forcedManifest["migration"] as? [String: Any] ?? [:]
        #expect(migration["maxStreamBytes"] as? Int == 1 << 20)
        #expect(migration["onMaxStream"] as? String == "switch-over")
        #expect(migration["capabilities"] as? [String: Bool] == ["auto-converge": false])
        let forced = migration["forcedSwitchOver"] as? [String: Any]
        #expect(forced != nil, "the switch-over was forced: \(migration)")
        #expect((forced?["streamBytes"] as? Int ?? 0) > 1 << 20)
        #expect(forced?["downtimeLimitMs"] as? Int == 2_000_000)
        #expect((migration["streamBytes"] as? Int ?? 0) >= forced?["streamBytes"] as? Int ?? Int.max)
        let resumedAt = Timestamp.parse((forcedManifest["timings"] as? [String: Any])?["resumedAt"] as? String ?? "") ?? 0
        var continued: [Tick] = []
        _ = try cevm.wait(timeout: 20) {
            continued = try ticks(cevm, "cap", after: resumedAt)
            return continued.count >= 3
        }
        #expect(continued.count >= 3 && continued.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(continued)")

        let plain = try checkpoint(cevm, "cap", ["--mechanism", "cevm"])
        let plainMigration = plain["migration"] as? [String: Any] ?? [:]
        let ram = (plain["spec"] as? [String: Any])?["memoryMiB"] as? Int ?? 0
        #expect(plainMigration["maxStreamBytes"] as? Int == (3 * ram + 256) << 20, "\(plainMigration)")
        #expect(plainMigration["forcedSwitchOver"] == nil, "\(plainMigration)")
        #expect((plainMigration["parameters"] as? [String: Int])?["downtime-limit"] == 50, "a forced limit does not outlive its checkpoint: cevm's default for CEVM again")

        try killHard(cevm, "cap")
        let started = Date().timeIntervalSince1970
        #expect(try cevm.run(["restore", forcedManifest["id"] as? String ?? "", "--name", "capback"]).ok)
        var restored: [Tick] = []
        _ = try cevm.wait(timeout: 20) {
            restored = try ticks(cevm, "capback", after: started)
            return restored.count >= 3
        }
        #expect(restored.count >= 3 && restored.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(restored)")
        #expect(restored.first?.counter == continued.first?.counter, "the restore continues where New_VM did")
        #expect(restored.first?.sum == continued.first?.sum, "with the same memory")
        #expect(try cevm.run(["stop", "capback"]).ok)
    }
}
