#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Records
import Testing
import TestSupport

/// Checkpoint a running bundled guest, lose it, restore it, and prove from
/// its console that it continues exactly where the checkpoint was taken.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct CheckpointRestoreTests {
    func checkpoint(_ cevm: borrowing CEVMHarness, _ name: String, _ options: [String] = ["--mechanism", "stop-and-save"]) throws
        -> (id: String, directory: String, manifest: [String: Any])
    {
        let result = try cevm.run(["checkpoint", name, "--json"] + options)
        guard result.ok, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
            let manifest = object["manifest"] as? [String: Any], let id = manifest["id"] as? String,
            let directory = object["directory"] as? String
        else { throw HarnessError("checkpoint failed: \(result.stderr)") }
        return (id, directory, manifest)
    }

    func killHard(_ cevm: borrowing CEVMHarness, _ name: String) throws {
        let detail = try cevm.status(name)["status"] as? [String: Any]
        for key in ["qemuPID", "supervisorPID"] {
            if let pid = detail?[key] as? Int { kill(pid_t(pid), SIGKILL) }
        }
        #expect(try cevm.wait(timeout: 5) { (try cevm.status(name)["supervisorAlive"] as? Bool) == false }, "the supervisor did not end")
        #expect(cevm.waitForQEMUCount(0, timeout: 5) == 0, "a QEMU of the VM outlived its supervisor")
    }

    func qemuImgCheck(_ path: String) throws -> (ok: Bool, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Executables.find("qemu-img") ?? "/usr/bin/qemu-img")
        process.arguments = ["check", "-U", path]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        process.waitUntilExit()
        return (process.terminationStatus == 0, String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }

    @Test func checkpointKillRestoreContinuesExactly() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "job", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("job", count: 8)
        let taken = try checkpoint(cevm, "job")
        let timings = taken.manifest["timings"] as? [String: Any]
        let resumedAt = Timestamp.parse(timings?["resumedAt"] as? String ?? "") ?? 0
        #expect(resumedAt > 0)
        #expect((timings?["guestPauseMs"] as? Double ?? 0) > 0)
        let migration = taken.manifest["migration"] as? [String: Any]
        #expect((migration?["parameters"] as? [String: Any])?["max-bandwidth"] as? Int == 1 << 40)

        // The record's disk is a qcow2 image QEMU's own checker accepts.
        let check = try qemuImgCheck("\(taken.directory)/disk.qcow2")
        #expect(check.ok, "\(check.output)")

        // The guest keeps running after the checkpoint, then is lost.
        let before = try cevm.waitForTicks("job", count: 14)
        try killHard(cevm, "job")
        let lastBeforeCheckpoint = before.filter { (Timestamp.parse($0.time) ?? .infinity) < resumedAt }.map(\.counter).max() ?? 0
        #expect(lastBeforeCheckpoint >= 8)
        let sums = Dictionary(before.map { ($0.counter, $0.sum) }, uniquingKeysWith: { first, _ in first })

        let restoreStarted = Date().timeIntervalSince1970
        let restore = try cevm.run(["restore", taken.id])
        #expect(restore.ok, "\(restore.stderr)")
        #expect(try cevm.status("job")["state"] as? String == "running")
        #expect(Files.exists("\(cevm.home)/vms/job/disk/overlay.before-restore.qcow2"), "the lost VM's overlay is kept aside")

        // Ticks the restored instance printed: they carry on from the checkpoint.
        var restored: [Tick] = []
        _ = try cevm.wait(timeout: 40) {
            restored = try cevm.consoleLines("job").compactMap(Tick.init).filter { (Timestamp.parse($0.time) ?? 0) > restoreStarted }
            return restored.count >= 6
        }
        #expect(restored.count >= 6)
        #expect(restored.first?.counter == lastBeforeCheckpoint + 1, "no gap and no repeat after the checkpoint")
        #expect(restored.map(\.counter) == Array((lastBeforeCheckpoint + 1)...(lastBeforeCheckpoint + restored.count)))
        #expect(restored.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "memory and disk verified by the guest")
        for tick in restored { if let sum = sums[tick.counter] { #expect(sum == tick.sum, "memory digest at \(tick.counter)") } }

        // The restored VM can be checkpointed again: its disk record builds on the first.
        let second = try checkpoint(cevm, "job")
        #expect(second.manifest["parent"] as? String == taken.id)
        #expect((second.manifest["disk"] as? [String: Any])?["kind"] as? String == "incremental")
        #expect(try qemuImgCheck("\(second.directory)/disk.qcow2").ok)
        let records = try cevm.run(["records", "job"])
        #expect(records.stdout.contains(taken.id) && records.stdout.contains(second.id))
        #expect(try cevm.run(["stop", "job"]).ok)
    }

    /// A background snapshot writes record format 2 like the other
    /// mechanisms (its stream has the device state after the pages, with no
    /// RAM END section): full, then incremental over the previous record,
    /// whichever mechanism wrote that one; `--full` and `--record-format 1`
    /// still apply. Each record restores to the guest's state at its pause,
    /// though the pages were written while the guest ran on.
    @Test func backgroundSnapshotsWriteFormatTwoAndRestoreThePause() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "bg", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("bg", count: 4)
        let background = ["--mechanism", "background-snapshot"]
        var taken: [(id: String, directory: String, manifest: [String: Any])] = []
        for options in [background, background, ["--mechanism", "cevm"], background, background + ["--full"], background + ["--record-format", "1"]] {
            taken.append(try checkpoint(cevm, "bg", options))
            _ = try cevm.waitForTicks("bg", count: try cevm.consoleLines("bg").compactMap(Tick.init).count + 2, timeout: 20)
        }
        let memory = taken.map { $0.manifest["memory"] as? [String: Any] }
        #expect(taken.map { $0.manifest["formatVersion"] as? Int } == [2, 2, 2, 2, 2, 1])
        #expect(taken.map { $0.manifest["mechanism"] as? String } == [
            "background-snapshot", "background-snapshot", "cevm", "background-snapshot", "background-snapshot", "background-snapshot",
        ])
        #expect(memory.map { $0?["kind"] as? String } == ["full", "incremental", "incremental", "incremental", "full", nil])
        #expect(memory[1]?["parent"] as? String == taken[0].id, "the second snapshot builds on the first")
        #expect(memory[2]?["parent"] as? String == taken[1].id, "a CEVM record builds on a snapshot")
        #expect(memory[3]?["parent"] as? String == taken[2].id, "a snapshot builds on a CEVM record")
        #expect((memory[1]?["dataPages"] as? Int ?? .max) < (memory[0]?["dataPages"] as? Int ?? 0) / 2, "an increment holds the changed pages")
        #expect(Files.exists("\(taken[5].directory)/memory.mig") && !Files.exists("\(taken[5].directory)/memory.qcow2"))
        for record in taken.prefix(5) {
            #expect(try qemuImgCheck("\(record.directory)/memory.qcow2").ok)
        }
        let original = try cevm.consoleLines("bg").compactMap(Tick.init)
        let sums = Dictionary(original.map { ($0.counter, $0.sum) }, uniquingKeysWith: { first, _ in first })
        #expect(try cevm.run(["stop", "bg"]).ok)

        for (index, record) in taken.enumerated() where [0, 1, 3, 5].contains(index) {
            let timings = record.manifest["timings"] as? [String: Any]
            let pausedAt = Timestamp.parse(timings?["pausedAt"] as? String ?? "") ?? 0
            // The host stamps console lines as they arrive: a tick stamped
            // a few ms after the pause may have been printed before it.
            let before = original.filter { (Timestamp.parse($0.time) ?? .infinity) < pausedAt }.map(\.counter).max() ?? 0
            let late = original.filter { abs((Timestamp.parse($0.time) ?? .infinity) - pausedAt) < 0.02 }.map(\.counter)
            let name = "r\(index)"
            let restore = try cevm.run(["restore", record.id, "--name", name])
            #expect(restore.ok, "\(record.id): \(restore.stderr)")
            let ticks = try cevm.waitForTicks(name, count: 3)
            let errors = try cevm.consoleLines(name).filter { $0.contains("cevm-error") }.prefix(6)
            #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(record.id): memory and disk verified by the guest \(errors)")
            let first = ticks.first?.counter ?? 0
            #expect(first == before + 1 || late.contains(first - 1), "\(record.id): restored at \(first), the pause came after tick \(before)")
            for tick in ticks { if let sum = sums[tick.counter] { #expect(sum == tick.sum, "\(record.id): memory digest at \(tick.counter)") } }
            #expect(try cevm.run(["stop", name]).ok)
        }
    }

    /// Records name each other relatively: a VM's whole records tree moved
    /// elsewhere (and renamed) still holds an incremental chain that qemu-img
    /// opens and that restores.
    @Test func aMovedRecordsTreeStillRestores() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "mover", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("mover", count: 3)
        let first = try checkpoint(cevm, "mover")
        _ = try cevm.waitForTicks("mover", count: 5)
        let second = try checkpoint(cevm, "mover")
        let disk = second.manifest["disk"] as? [String: Any]
        #expect(second.manifest["parent"] as? String == first.id)
        #expect(disk?["kind"] as? String == "incremental")
        #expect(disk?["backing"] as? String == "../\(first.id)/disk.qcow2", "a sibling record's disk is named relatively")
        #expect(try cevm.run(["stop", "mover"]).ok)

        let tree = Files.parent(of: second.directory)
        let moved = "\(cevm.home)/elsewhere-records"
        #expect(rename(tree, moved) == 0)
        let movedSecond = "\(moved)/\(second.directory.split(separator: "/").last.map(String.init) ?? second.id)"
        #expect(try qemuImgCheck("\(movedSecond)/disk.qcow2").ok)
        #expect(try qemuImgCheck("\(movedSecond)/memory.qcow2").ok)
        let record = try Record.load(directory: movedSecond)
        try record.verify()
        #expect(try MemoryChain(record).records.count == 2, "the memory chain is found in the moved tree")

        let restore = try cevm.run(["restore", movedSecond, "--name", "moved"])
        #expect(restore.ok, "\(restore.stderr)")
        let ticks = try cevm.waitForTicks("moved", count: 3)
        #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "memory and disk verified by the guest")
        #expect(try cevm.run(["stop", "moved"]).ok)
    }

    @Test func restoreRefusesARunningNameAndRestoresUnderAnother() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "orig", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("orig", count: 3)
        let taken = try checkpoint(cevm, "orig")
        let refused = try cevm.run(["restore", taken.id])
        #expect(!refused.ok)
        #expect(refused.stderr.contains("VM 'orig' is running"), "\(refused.stderr)")

        let copy = try cevm.run(["restore", taken.directory, "--name", "copy"])
        #expect(copy.ok, "\(copy.stderr)")
        let ticks = try cevm.waitForTicks("copy", count: 3)
        #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" })
        #expect(try cevm.status("orig")["state"] as? String == "running", "the original keeps running")
        #expect(try cevm.run(["stop", "copy"]).ok)
        #expect(try cevm.run(["stop", "orig"]).ok)
        try Record.load(directory: taken.directory).verify()
    }

    @Test func damagedRecordsAreRefusedAndNothingIsTouched() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "dmg", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("dmg", count: 3)
        let taken = try checkpoint(cevm, "dmg")
        #expect(try cevm.run(["stop", "dmg"]).ok)
        // Record format 2: the page image is the memory file.
        let memory = "\(taken.directory)/memory.qcow2"
        let size = try Files.size(memory)
        // A byte inside a data page: where qemu-img maps the first data cluster.
        let map = try runTool(["qemu-img", "map", "--output=json", "-f", "qcow2", memory])
        #expect(map.status == 0, "\(map.output)")
        let extents = try JSONSerialization.jsonObject(with: Data(map.output.utf8)) as? [[String: Any]] ?? []
        let data = try #require(extents.first { $0["data"] as? Bool == true && $0["offset"] != nil }, "no data cluster in \(memory)")
        let at = off_t(try #require(data["offset"] as? Int)) + 100

        // One flipped byte: the page image has no whole-file hash (its
        // digest file has one); the page digests catch it, before QEMU
        // loads anything.
        let manifest = try JSONSerialization.jsonObject(with: Data(Files.read("\(taken.directory)/manifest.json"))) as? [String: Any] ?? [:]
        let entries = manifest["files"] as? [[String: Any]] ?? []
        #expect(entries.first { $0["name"] as? String == "memory.qcow2" }?["sha256"] == nil)
        #expect(entries.first { $0["name"] as? String == "memory.digest" }?["sha256"] is String)
        let fd = open(memory, O_RDWR)
        var byte: UInt8 = 0
        _ = pread(fd, &byte, 1, at)
        byte ^= 0xff
        _ = pwrite(fd, &byte, 1, at)
        let flipped = try cevm.run(["restore", taken.id])
        #expect(!flipped.ok && flipped.stderr.contains("does not match its digest"), "\(flipped.stderr)")
        byte ^= 0xff
        _ = pwrite(fd, &byte, 1, at)
        close(fd)

        // A truncated stream.
        #expect(truncate(memory, off_t(size / 2)) == 0)
        let truncated = try cevm.run(["restore", taken.id])
        #expect(!truncated.ok && truncated.stderr.contains("truncated"), "\(truncated.stderr)")

        // A missing manifest, an unknown record, a hostile id.
        #expect(try cevm.run(["restore", "20990101-000000-0000"]).stderr.contains("no record"))
        #expect(!(try cevm.run(["restore", "../etc"]).ok))
        #expect(try cevm.status("dmg")["state"] as? String == "stopped", "a refused restore leaves the VM as it was")
        #expect(!(try cevm.run(["checkpoint", "dmg"]).ok), "a stopped VM cannot be checkpointed")
    }

    /// Cuts a record's device state (`memory.epilogue`) to a quarter, behind
    /// a manifest that agrees with the cut file: every check before the VM
    /// is touched passes (checksums, page digests), the stream is rebuilt,
    /// and QEMU refuses it. Returns the original bytes of both files.
    func cutDeviceState(_ directory: String) throws -> (epilogue: [UInt8], manifest: [UInt8]) {
        let epilogue = "\(directory)/memory.epilogue"
        let manifestPath = "\(directory)/manifest.json"
        let saved = (try Files.read(epilogue), try Files.read(manifestPath))
        #expect(truncate(epilogue, off_t(saved.0.count / 4)) == 0)
        var object = try JSONSerialization.jsonObject(with: Data(saved.1)) as? [String: Any] ?? [:]
        var files = object["files"] as? [[String: Any]] ?? []
        for i in files.indices where files[i]["name"] as? String == "memory.epilogue" {
            files[i]["sha256"] = try FileDigest.sha256(of: epilogue)
            files[i]["size"] = saved.0.count / 4
        }
        object["files"] = files
        try Files.writeAtomically(Array(try JSONSerialization.data(withJSONObject: object)), to: manifestPath)
        return saved
    }

    /// Every file of a directory and its SHA-256.
    func digests(_ directory: String) throws -> [String: String] {
        var all: [String: String] = [:]
        for name in try Files.list(directory) { all[name] = try FileDigest.sha256(of: "\(directory)/\(name)") }
        return all
    }

    /// A restore that fails after its supervisor made the new overlay
    /// (QEMU refuses the stream) leaves the VM as it was: its own overlay
    /// under its own name, its spec; a name it would have created is no
    /// VM; the record is untouched. The record put right then restores.
    /// A VM `name` run, checkpointed, run on a little and stopped: its
    /// record, its directory and its overlay's digest.
    func stoppedAfterACheckpoint(_ cevm: borrowing CEVMHarness, _ name: String) throws
        -> (taken: (id: String, directory: String, manifest: [String: Any]), vm: String, overlay: String)
    {
        #expect(try cevm.run(["run", name, "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks(name, count: 3)
        let taken = try checkpoint(cevm, name)
        _ = try cevm.waitForTicks(name, count: 5)
        #expect(try cevm.run(["stop", name]).ok)
        let vm = "\(cevm.home)/vms/\(name)"
        return (taken, vm, try FileDigest.sha256(of: "\(vm)/disk/overlay.qcow2"))
    }

    @Test func aFailedRestoreLeavesTheVMAsItWas() throws {
        let cevm = try CEVMHarness()
        let (taken, vm, overlay) = try stoppedAfterACheckpoint(cevm, "undo")
        let spec = try Files.read("\(vm)/spec.json")
        let disks = try Files.list("\(vm)/disk").sorted()
        let saved = try cutDeviceState(taken.directory)
        let record = try digests(taken.directory)

        let failed = try cevm.run(["restore", taken.id])
        #expect(!failed.ok && failed.stderr.contains("restore failed"), "it failed in the supervisor: \(failed.stderr)")
        #expect(failed.stderr.contains("load of migration failed"), "QEMU's own reason is reported: \(failed.stderr)")
        #expect(try FileDigest.sha256(of: "\(vm)/disk/overlay.qcow2") == overlay, "the VM's own overlay is back")
        #expect(try Files.list("\(vm)/disk").sorted() == disks, "no overlay of the restore is left, none moved aside")
        #expect(try Files.read("\(vm)/spec.json") == spec)
        #expect(try digests(taken.directory) == record, "the record is not written")
        #expect(cevm.waitForQEMUCount(0) == 0)

        let fresh = try cevm.run(["restore", taken.id, "--name", "fresh"])
        #expect(!fresh.ok && fresh.stderr.contains("restore failed"), "\(fresh.stderr)")
        #expect(!Files.exists("\(cevm.home)/vms/fresh/disk/overlay.qcow2"))
        #expect(!Files.exists("\(cevm.home)/vms/fresh/spec.json"), "a restore that failed made no VM")
        #expect(!(try cevm.run(["ps"]).stdout.contains("fresh")))

        try Files.writeAtomically(saved.epilogue, to: "\(taken.directory)/memory.epilogue")
        try Files.writeAtomically(saved.manifest, to: "\(taken.directory)/manifest.json")
        let restore = try cevm.run(["restore", taken.id])
        #expect(restore.ok, "\(restore.stderr)")
        #expect(Files.exists("\(vm)/disk/overlay.before-restore.qcow2"))
        #expect(try FileDigest.sha256(of: "\(vm)/disk/overlay.before-restore.qcow2") == overlay, "the overlay moved aside is the VM's")
        let ticks = try cevm.waitForTicks("undo", count: 8)
        #expect(ticks.suffix(2).allSatisfy { $0.mem == "ok" && $0.disk == "ok" })
        #expect(try cevm.run(["stop", "undo"]).ok)
    }

    /// `cevm restore` and the supervisor it started killed (-9) once the
    /// VM's overlay was moved aside: the journal the restore left is undone
    /// by the next restore, which then runs, and keeps the VM's own overlay
    /// aside — not the killed restore's.
    @Test func aKilledRestoreIsUndoneByTheNext() throws {
        let cevm = try CEVMHarness()
        let (taken, vm, overlay) = try stoppedAfterACheckpoint(cevm, "killed")

        let restore = try cevm.spawn(["restore", taken.id])
        let journaled = cevm.wait(timeout: 60) {
            ((try? Files.readString("\(vm)/restore-journal.json")) ?? "").contains("\"overlayIsNew\":true")
        }
        #expect(journaled, "the restore journals its overlay")
        kill(restore.processIdentifier, SIGKILL)
        restore.waitUntilExit()
        // The supervisor it started (it may not have written its status yet).
        CEVMHarness.killProcesses(mentioning: "supervise killed --restore")
        #expect(cevm.waitForQEMUCount(0, timeout: 20) == 0, "the restore's QEMU dies with its supervisor")
        #expect(Files.exists("\(vm)/restore-journal.json"))

        let again = try cevm.run(["restore", taken.id])
        #expect(again.ok, "\(cevm.diagnose(again, "killed"))")
        #expect(again.stderr.contains("an interrupted restore of \(taken.id)"), "\(again.stderr)")
        #expect(!Files.exists("\(vm)/restore-journal.json"))
        #expect(try FileDigest.sha256(of: "\(vm)/disk/overlay.before-restore.qcow2") == overlay, "the VM's own overlay is kept aside")
        let ticks = try cevm.waitForTicks("killed", count: 8)
        #expect(ticks.suffix(2).allSatisfy { $0.mem == "ok" && $0.disk == "ok" })
        #expect(try cevm.run(["stop", "killed"]).ok)
    }

    /// The VM's base image moved: a restore without `--base` is refused
    /// naming it; with `--base` at the moved copy the restored VM runs over
    /// a copy of the record's clusters on that base, memory and disk checked
    /// by the guest. A `--base` restore that fails leaves no
    /// `record-ID.qcow2` and no overlay behind.
    @Test func aMovedBaseRestoresWithBase() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "based", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("based", count: 3)
        let taken = try checkpoint(cevm, "based")
        #expect(try cevm.run(["stop", "based"]).ok)
        let external = taken.manifest["external"] as? [[String: Any]] ?? []
        let base = try #require(external.first { $0["role"] as? String == "base" }?["path"] as? String, "\(external)")
        let moved = "\(cevm.home)/elsewhere/base-copy.qcow2"
        try Files.makeDirectory("\(cevm.home)/elsewhere")
        #expect(rename(base, moved) == 0)

        let missing = try cevm.run(["restore", taken.id, "--name", "rebased"])
        #expect(!missing.ok && missing.stderr.contains("--base"), "\(missing.stderr)")
        #expect(!Files.exists("\(cevm.home)/vms/rebased/spec.json"), "refused before anything was made")

        let disk = "\(cevm.home)/vms/rebased/disk"
        let saved = try cutDeviceState(taken.directory)
        let failed = try cevm.run(["restore", taken.id, "--name", "rebased", "--base", moved])
        #expect(!failed.ok && failed.stderr.contains("restore failed"), "\(failed.stderr)")
        #expect(!Files.exists("\(disk)/record-\(taken.id).qcow2") && !Files.exists("\(disk)/overlay.qcow2"), "\((try? Files.list(disk)) ?? [])")
        try Files.writeAtomically(saved.epilogue, to: "\(taken.directory)/memory.epilogue")
        try Files.writeAtomically(saved.manifest, to: "\(taken.directory)/manifest.json")

        let restore = try cevm.run(["restore", taken.id, "--name", "rebased", "--base", moved])
        #expect(restore.ok, "\(restore.stderr)")
        #expect(Files.exists("\(disk)/record-\(taken.id).qcow2"))
        let info = try runTool(["qemu-img", "info", "--backing-chain", "-U", "\(disk)/overlay.qcow2"])
        #expect(info.output.contains(moved) && !info.output.contains(base), "the restored disk sits on the moved base: \(info.output)")
        let ticks = try cevm.waitForTicks("rebased", count: 3)
        #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "memory and disk verified by the guest")
        #expect(try cevm.run(["stop", "rebased"]).ok)
    }

    @Test(.enabled(if: getuid() == 0, "mounting a small tmpfs needs root"))
    func noSpaceLeftKeepsTheVMAndTheEarlierRecord() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "full", "--accel", "tcg", "--memory", "96M"]).ok)
        _ = try cevm.waitForTicks("full", count: 3)
        let records = "\(cevm.home)/vms/full/records"
        try Files.makeDirectory(records)
        // Room for one record of this guest but not two.
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=110m,mode=0700", "tmpfs", records]
        try mount.run()
        mount.waitUntilExit()
        guard mount.terminationStatus == 0 else {
            Issue.record("cannot mount a tmpfs here")
            return
        }
        defer {
            let umount = Process()
            umount.executableURL = URL(fileURLWithPath: "/bin/umount")
            umount.arguments = ["-l", records]
            try? umount.run()
            umount.waitUntilExit()
        }
        let first = try checkpoint(cevm, "full")
        var failed: CEVMHarness.Result?
        for _ in 0..<3 {
            // Full records: an incremental one of this idle guest would fit.
            let attempt = try cevm.run(["checkpoint", "full", "--mechanism", "stop-and-save", "--full"])
            if !attempt.ok {
                failed = attempt
                break
            }
        }
        #expect(failed?.stderr.contains("No space left on device") == true, "\(failed?.stderr ?? "every checkpoint fit")")
        #expect(try cevm.status("full")["state"] as? String == "running", "a failed checkpoint leaves the VM running")
        let ticksBefore = try cevm.consoleLines("full").compactMap(Tick.init).count
        #expect(
            try cevm.wait(timeout: 20) { try cevm.consoleLines("full").compactMap(Tick.init).count > ticksBefore }, "and the guest keeps computing")
        try Record.load(directory: first.directory).verify()
        let left = try Files.list(records).filter { $0 != first.id }
        let committed = left.filter { Files.exists("\(records)/\($0)/manifest.json") }
        #expect(left.count == committed.count, "no partial record is left behind: \(left)")
        #expect(try cevm.run(["stop", "full"]).ok)
    }
}
