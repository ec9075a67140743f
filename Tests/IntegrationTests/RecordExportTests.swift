#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Records
import Testing
import TestSupport
import VMStore

/// `cevm records export`: a standalone record restores with the VM, its
/// records and its base image gone, and the guest continues with its memory
/// and disk verified; a records tree renamed restores too.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct RecordExportTests {
    func checkpoint(_ cevm: borrowing CEVMHarness, _ name: String) throws -> (id: String, directory: String, manifest: [String: Any]) {
        let result = try cevm.run(["checkpoint", name, "--json"])
        guard result.ok, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
            let manifest = object["manifest"] as? [String: Any], let id = manifest["id"] as? String,
            let directory = object["directory"] as? String
        else { throw HarnessError("checkpoint failed: \(result.stderr)") }
        return (id, directory, manifest)
    }

    @Test func exportedRecordRestoresWithTheOriginalGone() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "src", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("src", count: 4)
        let first = try checkpoint(cevm, "src")
        _ = try cevm.waitForTicks("src", count: 8)
        let second = try checkpoint(cevm, "src")
        let memory = second.manifest["memory"] as? [String: Any]
        #expect(memory?["kind"] as? String == "incremental", "the second record's memory builds on the first")
        #expect(memory?["parent"] as? String == first.id)
        let external = second.manifest["external"] as? [[String: Any]] ?? []
        #expect(Set(external.compactMap { $0["role"] as? String }).isSuperset(of: ["kernel", "base"]), "\(external)")

        // The listing shows both kinds and sizes.
        let listing = try cevm.run(["records", "src"])
        #expect(listing.ok && listing.stdout.contains("MEM-KIND") && listing.stdout.contains("incremental"), "\(listing.stdout)")
        let listed = try JSONSerialization.jsonObject(with: Data(try cevm.run(["records", "src", "--json"]).stdout.utf8)) as? [[String: Any]]
        #expect(listed?.count == 2)
        #expect(listed?.last?["memoryKind"] as? String == "incremental")
        #expect((listed?.last?["memoryBytes"] as? Int ?? 0) > 0)

        let export = "\(cevm.home)/exported"
        let exported = try cevm.run(["records", "export", second.id, export])
        #expect(exported.ok, "\(exported.stderr)")
        #expect(try cevm.run(["records", "export", second.id, export]).stderr.contains("exists"), "an export never overwrites")

        // The original goes: the VM, its records, its base image.
        let lastBefore = try cevm.waitForTicks("src", count: 10).map(\.counter).max() ?? 0
        #expect(try cevm.run(["stop", "src"]).ok)
        try FileManager.default.removeItem(atPath: "\(cevm.home)/vms/src")

        let record = try Record.load(directory: export)
        #expect(record.manifest.memory?.kind == .full)
        #expect(record.manifest.disk?.kind == .full)
        if case .kernel(let kernel, _, _) = record.manifest.spec.boot { #expect(kernel == "kernel") } else { Issue.record("no kernel boot") }
        let info = try runTool(["qemu-img", "info", "--output=json", "\(export)/disk.qcow2"])
        #expect(!info.output.contains("backing-filename"), "the exported disk stands alone: \(info.output)")

        let started = Date().timeIntervalSince1970
        let restore = try cevm.run(["restore", export, "--name", "copy"])
        #expect(restore.ok, "\(restore.stderr)")
        var restored: [Tick] = []
        _ = try cevm.wait(timeout: 60) {
            restored = try cevm.consoleLines("copy").compactMap(Tick.init).filter { (Timestamp.parse($0.time) ?? 0) > started }
            return restored.count >= 4
        }
        #expect(restored.count >= 4)
        #expect(restored.allSatisfy { $0.mem == "ok" && $0.disk == "ok" }, "memory and disk verified by the guest")
        #expect((restored.first?.counter ?? 0) > 0 && (restored.first?.counter ?? 0) <= lastBefore, "it continues from the checkpoint")
        #expect(try cevm.run(["stop", "copy"]).ok)
    }

    /// A VM named `export`: `cevm records export` is the subcommand, and
    /// `cevm records list export` lists the VM's records.
    @Test func aVMNamedExportIsListedWithRecordsList() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "export", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("export", count: 3)
        let taken = try checkpoint(cevm, "export")
        #expect(try cevm.run(["stop", "export"]).ok)
        let listed = try cevm.run(["records", "list", "export"])
        #expect(listed.ok && listed.stdout.contains(taken.id), "\(listed.stdout)\(listed.stderr)")
        let json = try cevm.run(["records", "list", "export", "--json"])
        let rows = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]]
        #expect(rows?.compactMap { ($0["manifest"] as? [String: Any])?["id"] as? String } == [taken.id])
        let short = try cevm.run(["records", "export"])
        #expect(!short.ok, "`cevm records export` is the export subcommand, not the VM: \(short.stdout)")
    }

    @Test func aRenamedTreeRestoresAndADifferentKernelIsRefused() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "mv", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("mv", count: 3)
        // One record: its disk names the VM's base, which stays where it is.
        let second = try checkpoint(cevm, "mv")
        #expect(try cevm.run(["stop", "mv"]).ok)
        // The records tree moved, and a record directory named other than its id.
        let moved = "\(cevm.home)/moved-records"
        try FileManager.default.moveItem(atPath: "\(cevm.home)/vms/mv/records", toPath: moved)
        try FileManager.default.moveItem(atPath: "\(moved)/\(second.id)", toPath: "\(moved)/latest")

        // A different kernel given for the record's: refused, naming both digests.
        let fake = "\(cevm.home)/other-kernel"
        try Files.writeAtomically(Array(repeating: 7, count: 4096), to: fake)
        let refused = try cevm.run(["restore", "\(moved)/latest", "--name", "bad", "--kernel", fake])
        #expect(!refused.ok && refused.stderr.contains("is not the record's kernel") && refused.stderr.contains("SHA-256"), "\(refused.stderr)")
        #expect(!Files.exists("\(cevm.home)/vms/bad/spec.json"), "nothing was started")

        let restore = try cevm.run(["restore", "\(moved)/latest", "--name", "again"])
        #expect(restore.ok, "\(restore.stderr)")
        let ticks = try cevm.waitForTicks("again", count: 3)
        #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" })
        #expect(try cevm.run(["stop", "again"]).ok)
    }

    /// `--format qemu`: the checkpoint leaves cevm. Plain QEMU, started by
    /// the exported script with no cevm process anywhere, loads the stream
    /// and the guest goes on ticking with its memory and disk verified.
    @Test func aQEMUExportRunsWithoutCEVM() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["run", "leave", "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks("leave", count: 4)
        let taken = try checkpoint(cevm, "leave")
        let export = "\(cevm.home)/for-qemu"
        let exported = try cevm.run(["records", "export", taken.id, export, "--format", "qemu"])
        #expect(exported.ok, "\(exported.stderr)")
        #expect(try cevm.run(["stop", "leave"]).ok)
        try FileManager.default.removeItem(atPath: "\(cevm.home)/vms/leave")

        // QEMU's console goes to a file: QEMU alone, as a user would run it.
        let log = "\(cevm.home)/qemu-alone.log"
        #expect(FileManager.default.createFile(atPath: log, contents: nil))
        let console = try #require(FileHandle(forWritingAtPath: log))
        let qemu = Process()
        qemu.executableURL = URL(fileURLWithPath: "/bin/sh")
        qemu.arguments = ["\(export)/qemu-restore.sh"]
        qemu.standardInput = FileHandle.nullDevice
        qemu.standardOutput = console
        qemu.standardError = console
        try qemu.run()
        let collected = Collected(path: log)
        let deadline = Date().addingTimeInterval(60)
        while collected.ticks.count < 5 && Date() < deadline && qemu.isRunning { usleep(200_000) }
        // The script execs QEMU, so the signal reaches QEMU itself.
        qemu.terminate()
        let ended = Date().addingTimeInterval(10)
        while qemu.isRunning && Date() < ended { usleep(50_000) }
        if qemu.isRunning { kill(qemu.processIdentifier, SIGKILL) }
        try console.close()
        let ticks = collected.ticks
        #expect(ticks.count >= 5, "QEMU alone printed: \(collected.text.suffix(2000))")
        #expect(ticks.allSatisfy { $0.contains("mem=ok") && $0.contains("disk=ok") }, "\(ticks)")
    }

    struct Collected {
        let path: String
        var text: String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        /// Whole tick lines: a line QEMU is still writing is not one yet.
        var ticks: [String] {
            // The serial console ends lines with CR LF, one Character in Swift.
            var lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).map(String.init)
            lines.removeLast()
            return lines.filter { $0.hasPrefix("cevm-tick") }
        }
    }
}
