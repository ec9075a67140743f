import CEVMSystem
import Foundation
import Testing

/// Debian 12's own QEMU (7.2), unpacked by scripts/qemu-stable: what a user
/// with `CEVM_QEMU=stable` runs. Records of format 2 (stop-and-save and
/// CEVM, a full one and increments over it) are written and restored under
/// it, and the restored guest's own memory and disk checks pass.
enum StableQEMU {
    static var directory: String {
        let env = ProcessInfo.processInfo.environment
        return "\(env["XDG_CACHE_HOME"] ?? "\(env["HOME"] ?? "/root")/.cache")/cevm/qemu-stable"
    }

    static var unpacked: Bool { Files.exists("\(directory)/bin/qemu-system-x86_64") && Files.exists("\(directory)/stamp") }

    /// The environment that makes cevm (and the supervisors it starts) run
    /// this QEMU: first on PATH, its own modules.
    static var environment: [String: String] {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return ["PATH": "\(directory)/bin:\(path)", "QEMU_MODULE_DIR": "\(directory)/root/usr/lib/x86_64-linux-gnu/qemu"]
    }
}

@Suite(.serialized, .enabled(if: endToEndReady && StableQEMU.unpacked, "needs Debian 12's QEMU 7.2 unpacked by scripts/qemu-stable"))
struct StableQEMUTests {
    @Test func formatTwoRecordsRestoreUnderQEMU72() throws {
        let cevm = try CEVMHarness()
        let env = StableQEMU.environment
        let run = try cevm.run(["run", "old", "--accel", "tcg", "--memory", "256M"], environment: env)
        #expect(run.ok, "\(cevm.diagnose(run, "old"))")
        let status = try cevm.run(["status", "old"], environment: env)
        #expect(status.stdout.contains("QEMU 7.2"), "\(status.stdout)")
        _ = try cevm.waitForTicks("old", count: 5)

        var records: [(id: String, memoryKind: String)] = []
        for mechanism in ["stop-and-save", "cevm", "stop-and-save"] {
            let checkpoint = try cevm.run(["checkpoint", "old", "--mechanism", mechanism, "--json"], environment: env)
            #expect(checkpoint.ok, "\(mechanism): \(cevm.diagnose(checkpoint, "old"))")
            let object = try JSONSerialization.jsonObject(with: Data(checkpoint.stdout.utf8)) as? [String: Any]
            let manifest = try #require(object?["manifest"] as? [String: Any])
            #expect(manifest["formatVersion"] as? Int == 2, "\(mechanism)")
            let version = (manifest["qemu"] as? [String: Any])?["version"] as? String ?? ""
            #expect(version.hasPrefix("7.2"), "the record names the QEMU that made it: \(version)")
            let kind = (manifest["memory"] as? [String: Any])?["kind"] as? String ?? "?"
            records.append((try #require(manifest["id"] as? String), kind))
        }
        #expect(records.map(\.memoryKind) == ["full", "incremental", "incremental"])
        #expect(try cevm.run(["stop", "old"], environment: env).ok)

        // Each record restores under 7.2 and the guest's checks pass after it.
        for record in records {
            let restore = try cevm.run(["restore", record.id], environment: env)
            #expect(restore.ok, "\(record.id): \(cevm.diagnose(restore, "old"))")
            let before = try cevm.consoleLines("old").compactMap(Tick.init).count
            let ticks = try cevm.waitForTicks("old", count: before + 5)
            for tick in ticks.suffix(5) {
                #expect(tick.mem == "ok" && tick.disk == "ok", "\(record.id): \(tick)")
            }
            #expect(try cevm.run(["status", "old"], environment: env).stdout.contains("QEMU 7.2"))
            #expect(try cevm.run(["stop", "old"], environment: env).ok)
        }
    }
}
