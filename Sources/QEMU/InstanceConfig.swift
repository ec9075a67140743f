/// The accelerator an instance actually runs with.
public enum Accelerator: String, Codable, Sendable {
    case kvm, tcg
}

/// Everything that fixes one QEMU instance's command line. Two instances of
/// the same VM (the source and destination of a migration) differ only in
/// their sockets (QMP, network NICs' descriptors), their drive file,
/// `incoming` and `withholdHostForwards`: never in their devices.
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
    /// The VM's NICs, in order: NIC i is netdev `nic<i>`, device `net<i>`.
    public var nics: [NIC]
    /// Start user NICs without their host forwards: New_VM of a CEVM
    /// checkpoint, whose forwards Old_VM still binds until the switch-over
    /// (the checkpoint moves them over with `hostfwd_add`).
    public var withholdHostForwards: Bool

    /// A virtio-net NIC and its backend.
    public struct NIC: Sendable, Equatable {
        public enum Backend: Sendable, Equatable {
            /// `-netdev user`, with `hostfwd` rules written as QEMU takes
            /// them (`tcp:127.0.0.1:8080-:22`).
            case user(hostForwards: [String])
            /// `-netdev stream` on a connected stream socket: `descriptor`
            /// is open in this process, and the QEMU process inherits it
            /// (at `InstanceConfig.childDescriptor(ofNIC:)`).
            case stream(descriptor: Int32)
        }

        /// `52:54:00:12:34:56`.
        public var mac: String
        public var backend: Backend

        public init(mac: String, backend: Backend) {
            self.mac = mac
            self.backend = backend
        }
    }

    /// What the QEMU process inherits, from its descriptor 3 on: the held
    /// lock, then each stream NIC's socket in NIC order.
    public var inheritedDescriptors: [Int32] {
        (heldLock.map { [$0] } ?? [])
            + nics.compactMap { nic in
                if case .stream(let descriptor) = nic.backend { return descriptor }
                return nil
            }
    }

    /// The descriptor number NIC `index`'s socket has in the QEMU process;
    /// nil for a user NIC.
    public func childDescriptor(ofNIC index: Int) -> Int32? {
        guard nics.indices.contains(index), case .stream = nics[index].backend else { return nil }
        let streamsBefore = nics[..<index].filter { if case .stream = $0.backend { return true } else { return false } }.count
        return Int32(3 + (heldLock == nil ? 0 : 1) + streamsBefore)
    }

    public init(
        name: String, memoryMiB: Int, vcpus: Int, machine: String = QEMUCommandLine.defaultMachine,
        accel: Accelerator, boot: Boot, drive: Drive?, qmpSocket: String, incoming: Bool = false, cpuModel: String? = nil,
        ramPaddingKiB: Int = 0, heldLock: Int32? = nil, nics: [NIC] = [], withholdHostForwards: Bool = false
    ) {
        self.heldLock = heldLock
        self.nics = nics
        self.withholdHostForwards = withholdHostForwards
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
        args += nicArguments(for: config)
        if config.incoming { args += ["-incoming", "defer"] }
        return args
    }

    /// The netdev id of NIC `index`, as `hostfwd_add` and `hostfwd_remove` name it.
    public static func netdevID(ofNIC index: Int) -> String { "nic\(index)" }

    /// The NICs' `-netdev` and `-device` options. Ids and PCI slots depend
    /// only on each NIC's place in the list, so Old_VM and New_VM of a
    /// migration have the same devices at the same addresses (a migration
    /// stream names devices by their id and bus address). Slots from 0x10
    /// on, clear of q35's and the disk's automatically chosen ones.
    public static func nicArguments(for config: InstanceConfig) -> [String] {
        var args: [String] = []
        for (index, nic) in config.nics.enumerated() {
            let netdev = netdevID(ofNIC: index)
            switch nic.backend {
            case .user(let forwards):
                let rules = config.withholdHostForwards ? [] : forwards.map { ",hostfwd=\(escapeOption($0))" }
                args += ["-netdev", "user,id=\(netdev)" + rules.joined()]
            case .stream:
                guard let fd = config.childDescriptor(ofNIC: index) else { continue }
                args += ["-netdev", "stream,id=\(netdev),server=off,addr.type=fd,addr.str=\(fd)"]
            }
            args += [
                "-device",
                "virtio-net-pci,netdev=\(netdev),mac=\(escapeOption(nic.mac)),id=net\(index),addr=\(pciSlot(ofNIC: index))",
            ]
        }
        return args
    }

    /// NIC `index`'s PCI address on the root bus: `0x10` + index, function 0.
    public static func pciSlot(ofNIC index: Int) -> String {
        "0x" + String(0x10 + index, radix: 16)
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
