#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Testing

let endToEndReady = Files.exists(CEVMHarness.binaryPath) && Executables.find("qemu-system-x86_64") != nil
    && CEVMHarness.guestBuilt

/// End to end: the real cevm binary boots the bundled guest under QEMU
/// (TCG here), reads its console and stops it.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest (make test builds them)"))
struct VMLifecycleTests {
    @Test func runLogsStatusStop() throws {
        let cevm = try CEVMHarness()
        let run = try cevm.run(["run", "life", "--accel", "auto"])
        #expect(run.ok, "\(run.stderr)")
        #expect(run.stdout.contains("life running"))

        let ticks = try cevm.waitForTicks("life", count: 6)
        #expect(ticks.map(\.counter) == Array(1...ticks.count), "counters must start at 1 and have no gap")
        #expect(ticks.allSatisfy { $0.mem == "ok" && $0.disk == "ok" })
        let times = ticks.compactMap { Timestamp.parse($0.time) }
        #expect(times.count == ticks.count)
        #expect(times == times.sorted(), "host timestamps must not go backwards")

        let status = try cevm.status("life")
        #expect(status["state"] as? String == "running")
        let detail = status["status"] as? [String: Any]
        let qemuPID = detail?["qemuPID"] as? Int ?? -1
        #expect(qemuPID > 0 && kill(pid_t(qemuPID), 0) == 0, "QEMU should be alive")
        let accel = detail?["accel"] as? String ?? ""
        #expect(accel.hasPrefix("tcg") || accel.hasPrefix("kvm"), "accel: \(accel)")

        // A second run of a running name is refused and changes nothing.
        let again = try cevm.run(["run", "life"])
        #expect(!again.ok)
        #expect(again.stderr.contains("already running"))
        #expect(try cevm.status("life")["state"] as? String == "running")

        let ps = try cevm.run(["ps"])
        #expect(ps.stdout.contains("life") && ps.stdout.contains("running"))

        let stop = try cevm.run(["stop", "life"])
        #expect(stop.ok, "\(stop.stderr)")
        #expect(try cevm.status("life")["state"] as? String == "stopped")
        #expect(cevm.wait(timeout: 5) { kill(pid_t(qemuPID), 0) != 0 }, "QEMU should be gone")
        #expect(cevm.qemuProcesses().isEmpty)
        #expect(try cevm.run(["stop", "life"]).stderr.contains("not running"))

        // The console log outlives the VM.
        #expect(try cevm.consoleLines("life").compactMap(Tick.init).count >= ticks.count)
        let json = try cevm.run(["logs", "life", "--json"])
        let first = json.stdout.split(separator: "\n").first.map { Data($0.utf8) } ?? Data()
        let line = try JSONSerialization.jsonObject(with: first) as? [String: Any]
        #expect(line?["time"] is String && line?["text"] is String)
    }

    @Test func customKernelPinnedToOneCPUAndFollowedLogs() throws {
        let cevm = try CEVMHarness()
        let cpu = try Affinity.available().cpus.last ?? 0
        let guest = CEVMHarness.guestDirectory
        let run = try cevm.run([
            "run", "pinned", "--accel", "tcg", "--cpuset", "\(cpu)", "--cpus", "2", "--memory", "192M",
            "--kernel", "\(guest)/vmlinuz", "--initrd", "\(guest)/initrd.img",
            "--append", "console=ttyS0 panic=-1 quiet cevm.tick=100", "--disk-size", "32M",
        ])
        #expect(run.ok, "\(run.stderr)")
        _ = try cevm.waitForTicks("pinned", count: 3)
        let status = try cevm.status("pinned")
        let detail = status["status"] as? [String: Any]
        let qemuPID = pid_t(detail?["qemuPID"] as? Int ?? -1)
        #expect((detail?["vcpuThreads"] as? [Int])?.count == 2)
        let lists = try Affinity.allowedLists(of: qemuPID)
        #expect(lists.count >= 3)
        for (tid, list) in lists { #expect(list == "\(cpu)", "thread \(tid) of QEMU allowed on \(list)") }

        // `logs --follow` keeps printing and ends when the VM stops.
        let follow = Process()
        follow.executableURL = URL(fileURLWithPath: cevm.binary)
        follow.arguments = ["logs", "pinned", "--follow"]
        follow.environment = ProcessInfo.processInfo.environment.merging(["CEVM_HOME": cevm.home]) { $1 }
        let out = Pipe()
        follow.standardOutput = out
        try follow.run()
        // It keeps following while the guest prints three more ticks.
        _ = try cevm.waitForTicks("pinned", count: try cevm.consoleLines("pinned").compactMap(Tick.init).count + 3, timeout: 30)
        #expect(follow.isRunning)
        #expect(try cevm.run(["stop", "pinned"]).ok)
        #expect(cevm.wait(timeout: 10) { !follow.isRunning }, "logs --follow did not end with the VM")
        if follow.isRunning { follow.terminate() }
        let followed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(followed.split(separator: "\n").compactMap { Tick(String($0)) }.count >= 6)
    }

    @Test func bootsABootableDiskAndNeverWritesTheBase() throws {
        let cevm = try CEVMHarness()
        // A boot sector that prints "OK" on COM1 and halts.
        let code: [UInt8] = [0xBA, 0xF8, 0x03, 0xB0, 0x4F, 0xEE, 0xB0, 0x4B, 0xEE, 0xB0, 0x0A, 0xEE, 0xF4, 0xEB, 0xFD]
        var image = code + [UInt8](repeating: 0, count: 510 - code.count) + [0x55, 0xAA]
        image += [UInt8](repeating: 0, count: 1 << 20)
        let base = "\(cevm.home)/boot.img"
        try Files.writeAtomically(image, to: base)
        let before = try Files.read(base)
        let run = try cevm.run(["run", "disky", "--accel", "tcg", "--disk", base, "--boot-grace", "2"])
        #expect(run.ok, "\(run.stderr)")
        let printed = try cevm.wait(timeout: 10) { try cevm.consoleLines("disky").contains { $0.hasSuffix(" OK") } }
        #expect(printed, "the boot sector's output should reach the console log")
        #expect(try cevm.run(["stop", "disky"]).ok)
        #expect(try Files.read(base) == before, "the base image must never be written")
        #expect(Files.exists("\(cevm.home)/vms/disky/disk/overlay.qcow2"))
    }

    /// SIGTERM (and SIGINT, SIGHUP) to a detached supervisor shut it down
    /// gracefully: its VM stops as `cevm stop` stops it, the final status
    /// `stopped` is on disk before the supervisor exits, and no QEMU is left.
    @Test(arguments: [SIGTERM, SIGHUP])
    func signalStopsTheVMGracefully(signal: Int32) throws {
        let cevm = try CEVMHarness()
        let name = "sig\(signal)"
        let run = try cevm.run(["run", name, "--accel", "tcg"])
        #expect(run.ok, "\(run.stderr)")
        _ = try cevm.waitForTicks(name, count: 2)
        let qemuPID = pid_t((try cevm.status(name)["status"] as? [String: Any])?["qemuPID"] as? Int ?? -1)
        let supervisorPID = cevm.supervisorPID(name)
        let supervisor = try #require(supervisorPID)
        #expect(kill(supervisor, signal) == 0)
        #expect(cevm.wait(timeout: 60) { kill(supervisor, 0) != 0 }, "the supervisor did not exit after signal \(signal)")
        let text = try Files.readString("\(cevm.home)/vms/\(name)/status.json")
        let status = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(status["state"] as? String == "stopped", "\(status)")
        #expect((status["exitReason"] as? String ?? "").isEmpty == false)
        #expect(cevm.wait(timeout: 5) { kill(qemuPID, 0) != 0 }, "QEMU should be gone")
        #expect(try cevm.run(["stop", name]).stderr.contains("not running"))
    }
}

/// Bad input: each gets a clear error naming the problem and a non-zero exit.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct BadInputTests {
    @Test(arguments: [("a/b", "'/'"), ("..", "'..'"), ("../x", "'/'"), (".x", "starts with '.'")])
    func badNames(name: String, message: String) throws {
        let cevm = try CEVMHarness()
        for command in [["run", name], ["status", name], ["stop", name], ["logs", name]] {
            let result = try cevm.run(command)
            #expect(!result.ok)
            #expect(result.stderr.contains(message), "\(command): \(result.stderr)")
        }
        #expect(!Files.exists("\(cevm.home)/x"))
    }

    @Test func unknownVM() throws {
        let cevm = try CEVMHarness()
        for command in [["status", "ghost"], ["stop", "ghost"], ["logs", "ghost"], ["rm", "ghost"]] {
            let result = try cevm.run(command)
            #expect(!result.ok)
            #expect(result.stderr.contains("no VM named 'ghost'"), "\(command): \(result.stderr)")
        }
    }

    @Test func missingFiles() throws {
        let cevm = try CEVMHarness()
        let kernel = try cevm.run(["run", "k", "--kernel", "/nonexistent/vmlinuz"])
        #expect(!kernel.ok && kernel.stderr.contains("kernel /nonexistent/vmlinuz does not exist"))
        let disk = try cevm.run(["run", "d", "--disk", "/nonexistent/base.qcow2"])
        #expect(!disk.ok && disk.stderr.contains("disk image /nonexistent/base.qcow2 does not exist"))
        let initrd = try cevm.run(["run", "i", "--kernel", "\(CEVMHarness.guestDirectory)/vmlinuz", "--initrd", "/nonexistent/initrd"])
        #expect(!initrd.ok && initrd.stderr.contains("initrd /nonexistent/initrd does not exist"))
        #expect(try cevm.run(["ps"]).stdout.split(separator: "\n").count == 1, "failed runs must not leave VMs behind")
    }

    @Test func qemuMissing() throws {
        let cevm = try CEVMHarness()
        let result = try cevm.run(["run", "noqemu", "--accel", "tcg"], environment: ["PATH": "/nonexistent"])
        #expect(!result.ok)
        #expect(result.stderr.contains("qemu-system-x86_64 not found"), "\(result.stderr)")
    }

    @Test func guestThatDiesAtBoot() throws {
        let cevm = try CEVMHarness()
        // The real kernel with an empty initrd panics (no root), and with
        // panic=-1 and -no-reboot QEMU ends.
        let empty = "\(cevm.home)/empty.img"
        try Files.writeAtomically([UInt8](), to: empty)
        let result = try cevm.run([
            "run", "doomed", "--accel", "tcg", "--kernel", "\(CEVMHarness.guestDirectory)/vmlinuz", "--initrd", empty,
            "--append", "console=ttyS0 panic=-1", "--boot-grace", "90",
        ])
        #expect(!result.ok)
        #expect(result.stderr.contains("died at boot"), "\(result.stderr)")
        #expect(result.stderr.contains("rebooted") || result.stderr.contains("panic"), "\(result.stderr)")
        #expect(result.stderr.localizedCaseInsensitiveContains("kernel panic"), "the console tail should show the panic")
        #expect(try cevm.status("doomed")["state"] as? String == "failed")
    }
}
