/// The accelerator an instance actually runs with.
public enum Accelerator: String, Codable, Sendable {
    case kvm, tcg
}

/// Everything that fixes one QEMU instance's command line. Two instances of
/// the same VM (the source and destination of a migration) differ only in
/// their sockets, their drive file and `incoming`.
public struct InstanceConfig: Sendable, Equatable {
    public enum Boot: Sendable, Equatable {
        case kernel(kernel: String, initrd: String?, append: String)
        case disk
    }

    public struct Drive: Sendable, Equatable {
        public enum Source: Sendable, Equatable {
            /// An image file QEMU opens itself.
            case file(path: String, format: String)
            /// An export of cevm's disk manager over a Unix socket.
            case nbd(socket: String, export: String)
        }

        public var source: Source

        public init(file: String, format: String) {
            source = .file(path: file, format: format)
        }

        public init(nbdSocket socket: String, export: String) {
            source = .nbd(socket: socket, export: export)
        }
    }

    public var name: String
    public var memoryMiB: Int
    public var vcpus: Int
    public var machine: String
    public var accel: Accelerator
    public var boot: Boot
    public var drive: Drive?
    public var qmpSocket: String
    /// Start with `-incoming defer`, waiting for `migrate-incoming`.
    public var incoming: Bool
    /// QEMU's `-cpu` model; nil: `host` under KVM, `max` under TCG.
    public var cpuModel: String?
    /// KiB of RAM beyond `memoryMiB` (see `QEMUCommandLine.ramPaddingKiB`).
    public var ramPaddingKiB: Int
    /// A descriptor the QEMU process inherits (as its descriptor 3) for its
    /// whole life: the supervisor's flock on the VM's `lock`, so that the
    /// lock stays held while any QEMU of the VM lives, even one that
    /// outlived its supervisor. Not part of the command line. A copy of the
    /// config (New_VM's, during a CEVM checkpoint) carries it on.
    public var heldLock: Int32?

    public init(
        name: String, memoryMiB: Int, vcpus: Int, machine: String = QEMUCommandLine.defaultMachine,
        accel: Accelerator, boot: Boot, drive: Drive?, qmpSocket: String, incoming: Bool = false, cpuModel: String? = nil,
        ramPaddingKiB: Int = 0, heldLock: Int32? = nil
    ) {
        self.heldLock = heldLock
        self.cpuModel = cpuModel
        self.ramPaddingKiB = ramPaddingKiB
        self.name = name
        self.memoryMiB = memoryMiB
        self.vcpus = vcpus
        self.machine = machine
        self.accel = accel
        self.boot = boot
        self.drive = drive
        self.qmpSocket = qmpSocket
        self.incoming = incoming
    }
}

/// Builds QEMU's argv from an `InstanceConfig`. The result is passed to
/// posix_spawn as it is: no shell ever parses it, so paths need no quoting,
/// but QEMU's own option parser does treat ',' as a separator, which
/// `escapeOption` doubles.
public enum QEMUCommandLine {
    public static let defaultBinary = "qemu-system-x86_64"
    public static let defaultMachine = "q35"

    public static func arguments(for config: InstanceConfig) -> [String] {
        var args: [String] = [
            "-name", "guest=\(escapeOption(config.name)),debug-threads=on",
            "-machine", "\(config.machine)",
            "-accel", accelOption(for: config),
            "-cpu", config.cpuModel ?? (config.accel == .kvm ? "host" : "max"),
            "-m", config.ramPaddingKiB > 0 ? "\(config.memoryMiB * 1024 + config.ramPaddingKiB)k" : "\(config.memoryMiB)",
            "-smp", "\(config.vcpus)",
            "-nodefaults", "-no-user-config",
            "-display", "none",
            // A guest reboot ends the instance: the supervisor reports it
            // rather than QEMU silently starting the guest over.
            "-no-reboot",
            // Paused until the supervisor has pinned every thread.
            "-S",
            "-qmp", "unix:\(escapeOption(config.qmpSocket)),server=on,wait=off",
            // The serial console goes to QEMU's stdout, a pipe the owner reads.
            "-chardev", "stdio,id=console,signal=off",
            "-serial", "chardev:console",
        ]
        switch config.boot {
        case .kernel(let kernel, let initrd, let append):
            args += ["-kernel", kernel]
            if let initrd { args += ["-initrd", initrd] }
            if !append.isEmpty { args += ["-append", append] }
        case .disk:
            args += ["-boot", "order=c"]
        }
        if let drive = config.drive {
            switch drive.source {
            case .file(let path, let format):
                args += [
                    "-blockdev",
                    "driver=\(format),node-name=disk0,file.driver=file,file.filename=\(escapeOption(path)),cache.direct=off",
                ]
            case .nbd(let socket, let export):
                args += [
                    "-blockdev",
                    "driver=nbd,node-name=disk0,server.type=unix,server.path=\(escapeOption(socket)),export=\(escapeOption(export))",
                ]
            }
            args += ["-device", "virtio-blk-pci,drive=disk0,id=vda"]
        }
        if config.incoming { args += ["-incoming", "defer"] }
        return args
    }

    /// `-accel`'s value. TCG with one vCPU runs single-threaded
    /// (`thread=single`): multi-threaded TCG only helps with several vCPUs,
    /// and QEMU 7.2 live migration of a busy one-vCPU guest under
    /// `thread=multi` corrupted or hung it on the destination more often than
    /// under `thread=single` (Docs/architecture.md "Accelerator").
    public static func accelOption(for config: InstanceConfig) -> String {
        switch config.accel {
        case .kvm: return "kvm"
        case .tcg: return config.vcpus > 1 ? "tcg,thread=multi" : "tcg,thread=single"
        }
    }

    /// The CPU model a VM gets unless it names one (`cevm run --cpu-model`):
    /// the host's under KVM, QEMU's richest emulated one under TCG.
    public static func defaultCPUModel(for accel: Accelerator) -> String {
        accel == .kvm ? "host" : tcgCPUModel
    }

    public static let tcgCPUModel = "max"

    /// KiB of RAM cevm adds to a VM's `-m` so that its RAM block is not a
    /// multiple of 256 KiB (64 pages). QEMU before 9.0 (commit 03bfc2188f,
    /// "physmem: Fix migration dirty bitmap coherency with TCG memory
    /// access") syncs the migration dirty bitmap of such a block 64 pages at
    /// a time without resetting the TCG TLB's not-dirty flags, so stores
    /// through a cached TLB entry stop marking their page dirty and live
    /// migration silently loses them: under TCG every pre-copy migration
    /// of a busy guest here missed 7–24 hot kernel pages, and about half of
    /// them crashed the guest. A block of another length takes QEMU's
    /// page-by-page path, which resets the TLB (Docs/architecture.md,
    /// "Live migration under TCG"). 8 KiB: QEMU aligns `-m` to 8 KiB. New
    /// VMs get it only with a QEMU older than 9.0 (`ramPaddingKiB(for:)`).
    public static let ramPaddingKiB = 8

    /// QEMU option values use ',' as a separator; a literal ',' is written ",,".
    public static func escapeOption(_ value: String) -> String {
        value.replacingOccurrences(of: ",", with: ",,")
    }
}

extension String {
    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        split(separator: Character(target), omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
