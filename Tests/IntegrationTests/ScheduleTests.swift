import CEVMSystem
import Foundation
import Records
import Testing
import TestSupport

/// `cevm schedule` end to end: the supervisor checkpoints on its own, keeps
/// the newest records restorable, resumes the schedule after a restart and
/// stops when told.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct ScheduleTests {
    func records(_ cevm: borrowing CEVMHarness, _ name: String) throws -> [String] {
        let directory = "\(cevm.home)/vms/\(name)/records"
        return ((try? Files.list(directory)) ?? []).filter { Files.exists("\(directory)/\($0)/manifest.json") }
    }

    @Test func scheduledCheckpointsWithRetentionStayRestorable() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "sched", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("sched", count: 3)
        let set = try cevm.run(["schedule", "sched", "--every", "2s", "--policy", "alternate", "--keep", "2"])
        #expect(set.ok && set.stdout.contains("every 2.0 s") && set.stdout.contains("fixed interval"), "\(set.stdout) \(set.stderr)")
        // At least four checkpoints go by.
        var seen: Set<String> = []
        for _ in 0..<300 where seen.count < 4 {
            usleep(100_000)
            seen.formUnion(try records(cevm, "sched"))
        }
        #expect(seen.count >= 4, "\(seen)")
        // Retention runs right after each commit: between the two, keep + 1 records exist.
        let kept = try records(cevm, "sched")
        #expect(kept.count <= 3 && !kept.isEmpty, "retention keeps two (plus one just committed): \(kept)")
        #expect(seen.count > kept.count, "retention removed older records")
        let status = try cevm.run(["status", "sched"])
        #expect(status.stdout.contains("schedule:") && status.stdout.contains("next due:") && status.stdout.contains("last:"), "\(status.stdout)")

        // The schedule survives a restart of the VM.
        #expect(try cevm.run(["stop", "sched"]).ok)
        #expect(try cevm.run(["run", "sched"]).ok)
        #expect(try cevm.run(["status", "sched"]).stdout.contains("every 2.0 s"))
        let off = try cevm.run(["schedule", "sched", "--off"])
        #expect(off.ok && off.stdout.contains("schedule off"), "\(off.stdout) \(off.stderr)")
        let after = try records(cevm, "sched")
        // Longer than the old interval passes: 15 more ticks (about 3 s).
        _ = try cevm.waitForTicks("sched", count: try cevm.consoleLines("sched").compactMap(Tick.init).count + 15, timeout: 30)
        #expect(try records(cevm, "sched") == after, "no checkpoint once the schedule is off")
        #expect(try cevm.run(["stop", "sched"]).ok)

        // Every kept record is whole and restores, the oldest (merged) one too.
        // Their memory chains resolve within the kept records (a merged
        // child no longer names a removed parent) and read back what their
        // digests say; every image is clean.
        for id in after.sorted() {
            let record = try Record.load(directory: "\(cevm.home)/vms/sched/records/\(id)")
            try record.verify()
            if let memory = record.manifest.memory {
                let chain = try MemoryChain(record)
                #expect(chain.records.allSatisfy { after.contains($0.id) }, "\(id)'s memory chain stays among the kept records")
                var pages = 0
                try chain.reader().forEachPage { _, _, _ in pages += 1 }
                #expect(pages == memory.layout.guestPages)
                try expectClean("\(record.directory)/\(memory.image)")
            }
            if let disk = record.diskPath { try expectClean(disk) }
        }
        if let oldest = after.sorted().first {
            let record = try Record.load(directory: "\(cevm.home)/vms/sched/records/\(oldest)")
            #expect(record.manifest.memory?.parent == nil && record.manifest.parent == nil, "the oldest kept record builds on nothing removed")
        }
        if let oldest = after.sorted().first {
            #expect(try cevm.run(["restore", oldest, "--name", "back"]).ok)
            let ticks = try cevm.waitForTicks("back", count: 3)
            #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "\(ticks)")
            #expect(try cevm.run(["stop", "back"]).ok)
        }
    }

    @Test func scheduleArgumentsAreChecked() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "args", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("args", count: 2)
        for (arguments, word) in [
            (["schedule", "args"], "--every"), (["schedule", "args", "--every", "1m", "--mtbf", "1h"], "--every"),
            (["schedule", "args", "--every", "soon"], "--every"), (["schedule", "args", "--every", "1m", "--keep", "0"], "--keep"),
            (["schedule", "args", "--off", "--keep", "3"], "--off"), (["schedule", "ghost", "--every", "1m"], "ghost"),
            (["schedule", "args", "--every", "1m", "--mechanism", "stop-and-save", "--policy", "shared"], "--policy"),
        ] {
            let result = try cevm.run(arguments)
            #expect(!result.ok && result.stderr.contains(word), "\(arguments): \(result.stderr)")
        }
        #expect(try cevm.run(["stop", "args"]).ok)
        let stopped = try cevm.run(["schedule", "args", "--every", "1m"])
        #expect(!stopped.ok && stopped.stderr.contains("not running"), "\(stopped.stderr)")
    }
}
