import CEVMSystem

/// Which accelerator QEMU uses. `auto` probes KVM with a tiny guest and
/// falls back to TCG when KVM does not run it.
public enum AccelChoice: String, Codable, Sendable, CaseIterable {
    case auto, kvm, tcg
}

/// What a VM is: everything needed to start an instance of it again.
/// Stored as `spec.json` in the VM's directory.
public struct VMSpec: Codable, Sendable, Equatable {
    public var name: VMName
    public var memoryMiB: Int
    public var vcpus: Int
    /// Host CPUs the instance's threads are pinned to; nil = not pinned.
    public var cpuset: CPUSet?
    public var accel: AccelChoice
    public var machine: String
    public var boot: Boot
    public var disk: Disk?
    /// True when the VM runs the bundled guest.
    public var bundledGuest: Bool
    /// A console text that shows the guest has booted (the bundled guest's
    /// workload banner); without one, surviving the boot grace period counts.
    public var readyMarker: String?
    public var createdAt: String
    /// QEMU's `-cpu` model: `auto` (the host's under KVM, `max` under TCG),
    /// or a model QEMU knows, with options (`qemu64,+ssse3`). nil in specs
    /// older than the field: the same as `auto`.
    public var cpuModel: String?
    /// KiB of RAM QEMU is given beyond `memoryMiB`, fixed when the VM is
    /// made (`VMSpec.ramPaddingKiB`; nil in older specs: none). A record's
    /// memory restores only into the same RAM size, so it never changes.
    public var ramPaddingKiB: Int?
    /// The VM's NICs, in the order the guest sees them; each keeps its MAC
    /// for the VM's life (checkpoints and restores copy the spec). Specs
    /// older than the field have none.
    public var nics: [NIC]

    public static let automaticCPUModel = "auto"

    /// What new VMs get with a QEMU older than 9.0: 8 KiB, so that QEMU's
    /// RAM block is not a multiple of 256 KiB (the QEMU < 9.0 TCG migration
    /// bug described at `QEMUCommandLine.ramPaddingKiB`, which keeps the
    /// reasoning; `cevm run` asks `QEMUCommandLine.ramPaddingKiB(for:)`).
    public static let ramPaddingKiB = 8

    /// A `-cpu` value cevm passes on: a model name with `,`-separated
    /// options of letters, digits and `_ . - + =`.
    public static func isValidCPUModel(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, first.properties.isAlphabetic || ("0"..."9").contains(first), text.count <= 256 else {
            return false
        }
        return text.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "_.-+=,".unicodeScalars.contains($0)) }
    }

    public enum Boot: Codable, Sendable, Equatable {
        /// Direct kernel boot.
        case kernel(kernel: String, initrd: String?, append: String)
        /// Boot from the disk (its boot loader).
        case disk
    }

    /// The VM's disk: a read-only base image B under cevm's own overlay.
    public struct Disk: Codable, Sendable, Equatable {
        /// Absolute path of the base image.
        public var base: String
        /// Format of the base image as qemu-img reports it ("qcow2", "raw").
        public var baseFormat: String
        /// Virtual size in bytes.
        public var sizeBytes: Int64
        /// True when cevm created the base (an empty disk of `--disk-size`,
        /// or a copy of `template`).
        public var createdByCEVM: Bool
        /// The record whose disk is the base, for a restored VM.
        public var record: String?
        /// A raw image the created base starts as (the bundled guest's
        /// ext2 disk), grown to `sizeBytes` if that is larger.
        public var template: String?

        public init(
            base: String, baseFormat: String, sizeBytes: Int64, createdByCEVM: Bool, record: String? = nil,
            template: String? = nil
        ) {
            self.record = record
            self.template = template
            self.base = base
            self.baseFormat = baseFormat
            self.sizeBytes = sizeBytes
            self.createdByCEVM = createdByCEVM
        }
    }

    public init(
        name: VMName, memoryMiB: Int, vcpus: Int, cpuset: CPUSet?, accel: AccelChoice, machine: String,
        boot: Boot, disk: Disk?, bundledGuest: Bool, readyMarker: String? = nil, createdAt: String = Timestamp.now(),
        cpuModel: String? = VMSpec.automaticCPUModel, ramPaddingKiB: Int? = VMSpec.ramPaddingKiB, nics: [NIC] = []
    ) {
        self.nics = nics
        self.cpuModel = cpuModel
        self.ramPaddingKiB = ramPaddingKiB
        self.readyMarker = readyMarker
        self.name = name
        self.memoryMiB = memoryMiB
        self.vcpus = vcpus
        self.cpuset = cpuset
        self.accel = accel
        self.machine = machine
        self.boot = boot
        self.disk = disk
        self.bundledGuest = bundledGuest
        self.createdAt = createdAt
    }
}

extension VMSpec {
    private enum CodingKeys: String, CodingKey {
        case name, memoryMiB, vcpus, cpuset, accel, machine, boot, disk, bundledGuest, readyMarker, createdAt, cpuModel
        case ramPaddingKiB, nics
    }

    /// Decodes every field as the synthesized decoder would, and `nics` as
    /// none when absent (a spec or a record manifest from before NICs).
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(VMName.self, forKey: .name)
        memoryMiB = try container.decode(Int.self, forKey: .memoryMiB)
        vcpus = try container.decode(Int.self, forKey: .vcpus)
        cpuset = try container.decodeIfPresent(CPUSet.self, forKey: .cpuset)
        accel = try container.decode(AccelChoice.self, forKey: .accel)
        machine = try container.decode(String.self, forKey: .machine)
        boot = try container.decode(Boot.self, forKey: .boot)
        disk = try container.decodeIfPresent(Disk.self, forKey: .disk)
        bundledGuest = try container.decode(Bool.self, forKey: .bundledGuest)
        readyMarker = try container.decodeIfPresent(String.self, forKey: .readyMarker)
        createdAt = try container.decode(String.self, forKey: .createdAt)
        cpuModel = try container.decodeIfPresent(String.self, forKey: .cpuModel)
        ramPaddingKiB = try container.decodeIfPresent(Int.self, forKey: .ramPaddingKiB)
        nics = try container.decodeIfPresent([NIC].self, forKey: .nics) ?? []
    }
}

extension VMSpec: Validatable {
    /// Bounds of a spec, checked by `cevm run` before it writes one and by
    /// every reader of `spec.json`.
    public static let memoryRangeMiB = 16...(4 << 20)
    public static let vcpuRange = 1...64

    /// A QEMU machine type: a name of letters, digits and `_ . -` (no `,`:
    /// it would add options).
    public static func isValidMachine(_ text: String) -> Bool {
        !text.isEmpty && text.count <= 128
            && text.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "_.-".unicodeScalars.contains($0)) }
    }

    public func validate() throws(InvalidValue) {
        try Validate.integer(memoryMiB, "--memory (MiB)", in: Self.memoryRangeMiB)
        try Validate.integer(vcpus, "--cpus", in: Self.vcpuRange)
        try Validate.integer(ramPaddingKiB, "RAM padding (KiB)", in: 0...(1 << 20))
        if let cpuModel, !Self.isValidCPUModel(cpuModel) {
            throw InvalidValue(what: "--cpu-model", value: "'\(cpuModel)'", expected: "a QEMU CPU model (letters, digits, and options like qemu64,+ssse3)")
        }
        if !Self.isValidMachine(machine) {
            throw InvalidValue(what: "--machine", value: "'\(machine)'", expected: "a QEMU machine type (letters, digits, '_', '.', '-')")
        }
        if let disk { try Validate.integer(disk.sizeBytes, "disk size (bytes)", in: 1...(Int64(1) << 56)) }
        try Validate.integer(nics.count, "number of NICs", in: 0...NIC.maximumCount)
        for nic in nics { try nic.validate() }
        if Set(nics.map(\.mac)).count != nics.count {
            throw InvalidValue(what: "NIC MACs", value: nics.map(\.mac.description).joined(separator: " "), expected: "a different MAC for every NIC")
        }
        if let clash = HostForward.firstClash(in: nics.flatMap(\.hostForwards)) {
            throw InvalidValue(what: "NIC host forward", value: "'\(clash)'", expected: "a host port no other forward of the VM binds")
        }
    }
}
