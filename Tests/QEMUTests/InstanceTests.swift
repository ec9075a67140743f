#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QEMU
import QMP
import Synchronization
import Testing

let haveQEMU = Executables.find(QEMUCommandLine.defaultBinary) != nil

/// Real QEMU processes under TCG: no kernel, no disk (the firmware runs and
/// finds nothing to boot), enough to own, pin and end an instance.
@Suite(.enabled(if: haveQEMU, "qemu-system-x86_64 is not installed"))
struct InstanceTests {
    func scratch() throws -> String {
        let dir = "/tmp/cevm-qemu-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        return dir
    }

    func config(_ dir: String, machine: String = "q35") -> InstanceConfig {
        InstanceConfig(
            name: "t", memoryMiB: 32, vcpus: 2, machine: machine, accel: .tcg, boot: .disk, drive: nil,
            qmpSocket: "\(dir)/qmp.sock")
    }

    @Test func launchesPinsAndStops() async throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cpu = try Affinity.available().cpus.last ?? 0
        let instance = try await QEMUInstance.launch(
            config(dir), stderrLog: "\(dir)/stderr", cpuset: CPUSet([cpu]), console: { _ in })
        #expect(try await instance.runState() == "running")
        #expect(instance.qemuVersion.hasPrefix("7.") || instance.qemuVersion.split(separator: ".").count == 3)

        // Every thread, vCPUs included, is on the chosen CPU.
        let vcpus = try await instance.vcpuThreads()
        #expect(vcpus.count == 2)
        let lists = try Affinity.allowedLists(of: instance.pid)
        #expect(lists.count >= 3)
        for (tid, list) in lists { #expect(list == "\(cpu)", "thread \(tid) allowed on \(list)") }

        // The QMP socket is private.
        var st = stat()
        #expect(stat("\(dir)/qmp.sock", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)

        let reason = await instance.stop()
        #expect(reason.requested)
        #expect(reason.status == .exited(0))
        #expect(reason.shutdownReason == "host-signal")
        #expect(instance.exitReason == reason)
    }

    @Test func incomingInstanceWaitsForMigration() async throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = config(dir)
        config.incoming = true
        let instance = try await QEMUInstance.launch(config, stderrLog: "\(dir)/stderr", console: { _ in })
        #expect(try await instance.runState() == "inmigrate")
        await instance.stop()
    }

    @Test func migrationParametersTakeLargeIntegers() async throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let instance = try await QEMUInstance.launch(config(dir), stderrLog: "\(dir)/stderr", console: { _ in })
        defer { Task { await instance.stop() } }
        _ = try await instance.qmp.execute("migrate-set-parameters", arguments: ["max-bandwidth": .int(1 << 40)])
        let parameters = try await instance.qmp.execute("query-migrate-parameters")
        #expect(parameters["max-bandwidth"]?.int64Value == 1 << 40)
        _ = try await instance.qmp.execute("stop")
        #expect(try await instance.runState() == "paused")
    }

    @Test func earlyExitCarriesQEMUsOwnWords() async throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            _ = try await QEMUInstance.launch(config(dir, machine: "no-such-machine"), stderrLog: "\(dir)/stderr", console: { _ in })
            Issue.record("QEMU started with a bogus machine type")
        } catch let error as QEMUError {
            guard case .exitedAtStart(let status, let stderr) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(status != .exited(0))
            #expect(stderr.contains("unsupported machine type"), "\(stderr)")
        }
    }

    /// QEMU opens its QMP socket before it loads the kernel: a kernel it
    /// cannot load breaks the QMP session, and the error must still be
    /// QEMU's own words, not "the QMP connection is closed".
    @Test func aKernelQEMUCannotLoadIsReportedInItsWords() async throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var broken = config(dir)
        broken.boot = .kernel(kernel: dir, initrd: nil, append: "")  // a directory
        do {
            _ = try await QEMUInstance.launch(broken, stderrLog: "\(dir)/stderr", console: { _ in })
            Issue.record("QEMU started with a directory as its kernel")
        } catch let error as QEMUError {
            guard case .exitedAtStart(_, let stderr) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(stderr.contains("could not load kernel"), "\(stderr)")
        }
    }

    @Test func missingBinaryIsNamed() async throws {
        do {
            _ = try await QEMUInstance.launch(config("/tmp"), binary: "qemu-system-nonexistent", stderrLog: "/dev/null", console: { _ in })
            Issue.record("launched a missing binary")
        } catch let error as QEMUError {
            #expect("\(error)".contains("qemu-system-nonexistent not found"))
        }
    }

    @Test func probeRunsUnderTCG() async {
        let result = await AccelProbe.runProbe(accel: .tcg)
        #expect(result.ok, "\(result.detail)")
    }

    @Test func autoLandsOnAWorkingAcceleratorWithoutHanging() async {
        let started = ContinuousClock.now
        let result = await AccelProbe.resolveAuto(cacheDirectory: nil)
        // The probe gives KVM 3 s; a hang would never return at all.
        #expect(ContinuousClock.now - started < .seconds(60))
        if result.accelerator == .kvm {
            // Then KVM really ran the probe guest.
            #expect(await AccelProbe.runProbe(accel: .kvm).ok)
        } else {
            #expect(!result.reason.isEmpty)
        }
    }
}
