#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation

/// Decides between KVM and TCG by running a guest, not by trusting that
/// /dev/kvm opens: on some hosts /dev/kvm opens but a KVM guest hangs in the
/// kernel. The probe guest is a 512-byte boot sector that writes "OK" to the
/// serial port and leaves through isa-debug-exit; KVM is used only if that
/// output arrives within the time limit.
public enum AccelProbe {
    public struct Result: Codable, Sendable, Equatable {
        public var accelerator: Accelerator
        public var reason: String

        public init(accelerator: Accelerator, reason: String) {
            self.accelerator = accelerator
            self.reason = reason
        }
    }

    /// x86 real-mode code: out 'O','K','\n' to COM1 (0x3f8), then exit
    /// through isa-debug-exit (port 0xf4), then halt.
    static let bootSector: [UInt8] = {
        let code: [UInt8] = [
            0xBA, 0xF8, 0x03,  // mov dx, 0x3f8
            0xB0, 0x4F, 0xEE,  // mov al, 'O'; out dx, al
            0xB0, 0x4B, 0xEE,  // mov al, 'K'; out dx, al
            0xB0, 0x0A, 0xEE,  // mov al, '\n'; out dx, al
            0xBA, 0xF4, 0x00,  // mov dx, 0xf4
            0xB0, 0x00, 0xEE,  // mov al, 0; out dx, al  -> QEMU exits with status 1
            0xF4,  // hlt
            0xEB, 0xFD,  // jmp back to hlt
        ]
        return code + [UInt8](repeating: 0, count: 510 - code.count) + [0x55, 0xAA]
    }()

    /// Runs the probe guest under `accel` and reports whether it printed "OK"
    /// within `timeout`. A hung QEMU is killed; its reaping goes on in the
    /// background and is not waited for.
    public static func runProbe(accel: Accelerator, binary: String = QEMUCommandLine.defaultBinary, timeout: Duration = .seconds(3)) async -> (ok: Bool, detail: String) {
        guard Executables.find(binary) != nil else { return (false, "\(binary) not found") }
        let dir = NSTemporaryDirectory() + "cevm-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        do { try Files.makeDirectory(dir) } catch { return (false, "\(error)") }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = "\(dir)/boot.img"
        do { try Files.writeAtomically(bootSector, to: image) } catch { return (false, "\(error)") }
        let out = "\(dir)/out"
        let err = "\(dir)/err"
        let child: ChildProcess
        do {
            child = try ChildProcess.spawn(
                binary,
                arguments: [
                    // The CPU model real instances get: KVM may run a bare
                    // guest and still refuse the host model's MSRs.
                    "-accel", accel.rawValue, "-cpu", QEMUCommandLine.defaultCPUModel(for: accel),
                    "-machine", "pc", "-m", "16", "-nodefaults", "-no-user-config",
                    "-display", "none", "-no-reboot", "-serial", "file:\(out)",
                    "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                    "-drive", "file=\(image),format=raw,if=ide",
                ],
                stdout: .null, stderr: .truncateFile(err), tiedToParent: true)
        } catch { return (false, "\(error)") }
        let status = await child.wait(timeout: timeout)
        let printed = (try? Files.readString(out)) ?? ""
        if status == nil {
            child.signal(SIGKILL)
            return (false, "the probe guest printed nothing within \(timeout) under \(accel.rawValue) (hung)")
        }
        if printed.contains("OK") { return (true, "a probe guest ran under \(accel.rawValue)") }
        // QEMU's first line says why (an assertion's text may follow).
        let stderr = ((try? Files.readString(err)) ?? "").trimmingSpaces().split(separator: "\n").first.map(String.init) ?? ""
        return (false, "probe under \(accel.rawValue) \(status.map { "\($0)" } ?? ""): \(stderr.isEmpty ? "no output" : stderr)")
    }

    /// The accelerator for `auto`: KVM if /dev/kvm can be opened and the probe
    /// guest runs under it, else TCG. The answer is cached per boot of the
    /// host in `cacheDirectory` (if given).
    public static func resolveAuto(cacheDirectory: String?, binary: String = QEMUCommandLine.defaultBinary) async -> Result {
        let cacheFile = cacheDirectory.map { "\($0)/accel-probe.json" }
        let key = cacheKey(binary: binary)
        if let cacheFile, let cached = try? JSONDecoder().decode(Cached.self, from: Data(Files.read(cacheFile))),
            cached.key == key
        {
            return cached.result
        }
        let result: Result
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if fd < 0 {
            result = Result(accelerator: .tcg, reason: "/dev/kvm cannot be opened (\(String(cString: strerror(errno))))")
        } else {
            close(fd)
            let probe = await runProbe(accel: .kvm, binary: binary)
            result = probe.ok
                ? Result(accelerator: .kvm, reason: probe.detail)
                : Result(accelerator: .tcg, reason: "KVM probe failed: \(probe.detail)")
        }
        if let cacheFile, let data = try? JSONEncoder().encode(Cached(key: key, result: result)) {
            try? Files.writeAtomically(data, to: cacheFile)
        }
        return result
    }

    /// After the probe said KVM works, an instance under it still failed at
    /// start: `auto` means TCG from now on (cached like a failed probe), and
    /// the answer to use instead is returned.
    public static func recordKVMFailure(cacheDirectory: String?, binary: String = QEMUCommandLine.defaultBinary, reason: String) -> Result {
        let result = Result(accelerator: .tcg, reason: "KVM failed at start: \(reason.split(separator: "\n").first ?? "")")
        if let cacheFile = cacheDirectory.map({ "\($0)/accel-probe.json" }),
            let data = try? JSONEncoder().encode(Cached(key: cacheKey(binary: binary), result: result))
        {
            try? Files.writeAtomically(data, to: cacheFile)
        }
        return result
    }

    /// `kvm` must work when asked for explicitly; `tcg` always does.
    public static func require(_ accel: Accelerator, binary: String = QEMUCommandLine.defaultBinary) async throws -> Accelerator {
        guard accel == .kvm else { return .tcg }
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if fd < 0 { throw QEMUError.kvmUnavailable("/dev/kvm: \(String(cString: strerror(errno)))") }
        close(fd)
        let probe = await runProbe(accel: .kvm, binary: binary)
        if !probe.ok { throw QEMUError.kvmUnavailable(probe.detail) }
        return .kvm
    }

    private struct Cached: Codable {
        var key: String
        var result: Result
    }

    private static func cacheKey(binary: String) -> String {
        let boot = ((try? Files.readString("/proc/sys/kernel/random/boot_id")) ?? "").trimmingSpaces()
        return "\(boot) \(Executables.find(binary) ?? binary)"
    }
}
