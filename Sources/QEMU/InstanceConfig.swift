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

    public init(
        name: String, memoryMiB: Int, vcpus: Int, machine: String = QEMUCommandLine.defaultMachine,
        accel: Accelerator, boot: Boot, drive: Drive?, qmpSocket: String, incoming: Bool = false
    ) {
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
            "-accel", config.accel == .tcg ? "tcg,thread=multi" : "kvm",
            "-cpu", config.accel == .kvm ? "host" : "max",
            "-m", "\(config.memoryMiB)",
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
