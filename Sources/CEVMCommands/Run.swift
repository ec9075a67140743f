#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CEVMSystem
import Foundation
import QEMU
import Supervisor
import VMStore

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a VM under its own supervisor.",
        discussion: """
            With no --kernel and no --disk, runs the bundled guest. The base image given with \
            --disk is never written: cevm puts its own qcow2 overlay on top of it. A VM that \
            exists and is stopped is started again from its stored spec.
            """)

    @Argument(help: "The VM's name (letters, digits, '.', '_', '-').")
    var name: String

    @Option(help: "Guest RAM (e.g. 128M, 1G; a plain number is MiB).")
    var memory: String?

    @Option(help: "Number of vCPUs.")
    var cpus: Int?

    @Option(help: "Host CPUs to pin every QEMU thread to (e.g. 0 or 0-1,3).")
    var cpuset: String?

    @Option(help: "A base image (qcow2 or raw) to boot from or attach; never written.")
    var disk: String?

    @Option(name: .customLong("disk-size"), help: "Size of a new empty disk when there is no --disk (default 64M).")
    var diskSize: String?

    @Option(help: "Kernel for direct boot.")
    var kernel: String?

    @Option(help: "Initrd for direct boot.")
    var initrd: String?

    @Option(help: "Kernel command line (added after the bundled guest's defaults).")
    var append: String?

    @Option(help: "Accelerator: auto (probe KVM, else TCG), kvm or tcg.")
    var accel: AccelChoice?

    @Option(help: "QEMU machine type.")
    var machine: String?

    @Option(
        name: .customLong("cpu-model"),
        help: "QEMU -cpu model, with options (default auto: the host's under KVM, \(QEMUCommandLine.tcgCPUModel) under TCG).")
    var cpuModel: String?

    @Option(
        name: .customLong("nic"),
        help: ArgumentHelp(
            "A virtio-net NIC (repeatable): user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]… or net=NETWORK[,mac=MAC].",
            discussion: "A NIC's MAC is chosen once (52:54:00:xx:xx:xx unless mac= is given) and kept by every checkpoint and restore."))
    var nics: [String] = []

    @Flag(help: "Run the supervisor in this process (for service managers).")
    var foreground = false

    @Option(name: .customLong("boot-grace"), help: "Seconds the guest must stay up to count as booted.")
    var bootGrace: Double = 3

    @OptionGroup var common: CommonOptions

    var specOptionsGiven: Bool {
        memory != nil || cpus != nil || cpuset != nil || disk != nil || diskSize != nil || kernel != nil
            || initrd != nil || append != nil || accel != nil || machine != nil || cpuModel != nil || !nics.isEmpty
    }

    func run() async throws {
        try await Output.reporting {
            let name = try parseName(name)
            _ = try Supervisor.Options.bootGrace(seconds: bootGrace)
            let home = common.home
            try home.prepare()
            let paths = home.vm(name)
            try paths.checkSocketPaths()
            for tool in [QEMUCommandLine.defaultBinary, "qemu-img"] where Executables.find(tool) == nil {
                throw QEMUError.qemuMissing(binary: tool)
            }
            if let holder = paths.lockHolder { throw SupervisorError.lockHeld(name, holder) }
            // A restore killed before it finished left its journal: undo it first.
            if let recovered = await RestoreJournal.recover(paths) { Output.notice(recovered) }
            if Files.exists(paths.spec) {
                if specOptionsGiven {
                    throw CLIError(
                        "VM '\(name)' already exists (stopped); it starts again with its stored spec, so drop the options or remove it with `cevm rm \(name)`")
                }
                try await ensureNetworks(of: try paths.readSpec(), home: common.home)
            } else {
                let spec = try await makeSpec(name: name)
                try spec.validate()
                try await ensureNetworks(of: spec, home: common.home)
                try Files.makeDirectory(paths.directory, mode: 0o700)
                try paths.writeSpec(spec)
            }
            let status = foreground ? try await runForeground(home: home, name: name) : try await runDetached(home: home, name: name)
            Output.endProgress()
            if common.json {
                try Output.json(status)
            } else if status.state == .running {
                Output.line("\(name) running (qemu pid \(status.qemuPID.map(String.init) ?? "?"), \(status.accel ?? "?"))")
            } else {
                Output.line("\(name) \(status.state.rawValue)\(status.exitReason.map { ": \($0)" } ?? "")")
            }
            if status.state == .failed { throw CLIError(status.message ?? "VM '\(name)' failed") }
        }
    }

    /// The NICs asked for with `--nic`, each with its MAC.
    static func parseNICs(_ values: [String]) throws -> [NIC] {
        guard values.count <= NIC.maximumCount else { throw CLIError("at most \(NIC.maximumCount) --nic options") }
        let requests = try values.map { value throws(NICError) in try NIC.Request.parse(value) }
        return try NIC.make(requests)
    }

    private func makeSpec(name: VMName) async throws -> VMSpec {
        let nicList = try Self.parseNICs(nics)
        let memoryMiB = try memory.map { Int(try parseSize($0, defaultUnit: 1 << 20) >> 20) } ?? 128
        let vcpus = cpus ?? 1
        var pinned: CPUSet?
        if let cpuset {
            do { pinned = try CPUSet(parsing: cpuset) } catch { throw CLIError("--cpuset: \(error)") }
            let available = try Affinity.available()
            if let set = pinned, !set.isSubset(of: available) {
                throw CLIError("--cpuset \(set) is not within the CPUs this process may use (\(available))")
            }
        }
        if disk != nil && diskSize != nil { throw CLIError("give either --disk or --disk-size, not both") }
        if let cpuModel, !VMSpec.isValidCPUModel(cpuModel) {
            throw CLIError("--cpu-model '\(cpuModel)' is not a QEMU CPU model (letters, digits, and options like qemu64,+ssse3)")
        }
        if kernel == nil && (initrd != nil) { throw CLIError("--initrd needs --kernel") }

        let paths = Home.fromEnvironment().vm(name)
        var diskSpec: VMSpec.Disk?
        if let disk {
            let base = Home.absolute(disk)
            guard Files.exists(base) else { throw CLIError("disk image \(base) does not exist") }
            let info = try await QEMUImg.info(base)
            diskSpec = VMSpec.Disk(base: base, baseFormat: info.format, sizeBytes: info.virtualSize, createdByCEVM: false)
        }

        let boot: VMSpec.Boot
        var bundled = false
        if let kernel {
            let kernelPath = Home.absolute(kernel)
            guard Files.exists(kernelPath) else { throw CLIError("kernel \(kernelPath) does not exist") }
            let initrdPath = initrd.map(Home.absolute)
            if let initrdPath, !Files.exists(initrdPath) { throw CLIError("initrd \(initrdPath) does not exist") }
            boot = .kernel(kernel: kernelPath, initrd: initrdPath, append: append ?? "")
        } else if diskSpec != nil {
            if append != nil { throw CLIError("--append needs --kernel (or the bundled guest)") }
            boot = .disk
        } else {
            let guest = BundledGuest.locate()
            let defaults = try guest.defaultAppend()
            boot = .kernel(kernel: guest.kernel, initrd: guest.initrd, append: [defaults, append ?? ""].filter { !$0.isEmpty }.joined(separator: " "))
            bundled = true
        }
        if diskSpec == nil && (bundled || diskSize != nil) {
            var size = try parseSize(diskSize ?? "64M", defaultUnit: 1 << 20)
            var template: String?
            if bundled {
                // The bundled guest's disk starts as its ext2 template.
                let guest = BundledGuest.locate()
                template = guest.disk
                size = max(size, try Files.size(guest.disk))
            }
            diskSpec = VMSpec.Disk(
                base: paths.createdBase, baseFormat: "qcow2", sizeBytes: size, createdByCEVM: true, template: template)
        }
        return VMSpec(
            name: name, memoryMiB: memoryMiB, vcpus: vcpus, cpuset: pinned, accel: accel ?? .auto,
            machine: machine ?? QEMUCommandLine.defaultMachine, boot: boot, disk: diskSpec, bundledGuest: bundled,
            readyMarker: bundled ? BundledGuest.readyMarker : nil, cpuModel: cpuModel ?? VMSpec.automaticCPUModel,
            ramPaddingKiB: QEMUCommandLine.ramPaddingKiB(for: try? await QEMUVersion.of()), nics: nicList)
    }

    private func runForeground(home: Home, name: VMName) async throws -> VMStatus {
        var options = Supervisor.Options()
        options.bootGrace = try Supervisor.Options.bootGrace(seconds: bootGrace)
        // This process is the VM's: Ctrl-C (SIGINT), SIGTERM and SIGHUP stop it gracefully.
        options.handlesSignals = true
        options.onStatus = { status in
            if !common.json { Output.line("\(name): \(status.state.rawValue)\(status.message.map { ": \($0)" } ?? "")") }
        }
        return try await Supervisor.run(home: home, name: name, options: options)
    }

    private func runDetached(home: Home, name: VMName) async throws -> VMStatus {
        try await SupervisorLauncher.startDetached(home: home, name: name, arguments: ["--boot-grace", "\(bootGrace)"])
    }
}

/// Starts supervisors in the background.
enum SupervisorLauncher {
    /// Starts `cevm supervise NAME ARGS` in a new session, its output in the
    /// VM's supervisor.log, and waits until it reports the VM running,
    /// failed or stopped.
    static func startDetached(home: Home, name: VMName, arguments: [String]) async throws -> VMStatus {
        let paths = home.vm(name)
        Files.remove(paths.status)
        var environment = Executables.currentEnvironment()
        environment["CEVM_HOME"] = home.root
        let child = try ChildProcess.spawn(
            Executables.currentExecutable(),
            arguments: ["supervise", name.value] + arguments,
            environment: environment, stdin: .null,
            stdout: .appendFile(paths.supervisorLog), stderr: .appendFile(paths.supervisorLog),
            newSession: true)
        let started = ContinuousClock.now
        while true {
            if let status = paths.readStatus() {
                Output.progress("\(name): \(status.state.rawValue)…")
                if [.running, .paused, .failed, .stopped].contains(status.state) { return status }
            }
            if let exit = child.exitStatus, paths.readStatus().map({ $0.state.isLive }) ?? true {
                let log = QEMUInstance.tail(of: paths.supervisorLog)
                throw SupervisorError.startFailed(name, "the supervisor \(exit)" + (log.isEmpty ? "" : ": \(log)"))
            }
            if ContinuousClock.now - started > .seconds(300) {
                throw SupervisorError.startFailed(name, "not running after 300 s; see \(paths.supervisorLog)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}

extension AccelChoice: ExpressibleByArgument {}

/// `cevm supervise NAME`: the supervisor process `cevm run` starts.
struct Supervise: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a VM's supervisor (started by `cevm run`).", shouldDisplay: false)

    @Argument var name: String

    @Option(name: .customLong("boot-grace")) var bootGrace: Double = 3

    @Option(help: "A record directory to restore from instead of booting.") var restore: String?

    @Flag(help: "With --restore: hold the guest paused until a resume request.") var paused = false
    @Flag(
        name: .customLong("restore-pages-checked"),
        help: "The record's pages were just checked against their digests (by `cevm restore`): stream them without hashing them again.")
    var restorePagesChecked = false

    func run() async throws {
        try await Output.reporting {
            let name = try parseName(name)
            var options = Supervisor.Options()
            options.bootGrace = try Supervisor.Options.bootGrace(seconds: bootGrace)
            options.restore = restore
            options.restorePaused = paused
            options.restorePagesChecked = restorePagesChecked
            // `cevm stop`'s fallback and the system send SIGTERM: the VM stops gracefully.
            options.handlesSignals = true
            options.onStatus = { status in
                FileHandle.standardError.write(Data("\(Timestamp.now()) \(status.state.rawValue)\(status.message.map { ": \($0)" } ?? "")\n".utf8))
            }
            let status = try await Supervisor.run(home: Home.fromEnvironment(), name: name, options: options)
            if status.state == .failed { throw ExitCode.failure }
        }
    }
}
