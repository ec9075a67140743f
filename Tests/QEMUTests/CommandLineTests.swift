import QEMU
import Testing

@Suite struct CommandLineTests {
    let config = InstanceConfig(
        name: "vm,1", memoryMiB: 256, vcpus: 2, accel: .tcg,
        boot: .kernel(kernel: "/k dir/vmlinuz", initrd: "/i", append: "console=ttyS0 a='b c'"),
        drive: .init(file: "/d,x/overlay.qcow2", format: "qcow2"), qmpSocket: "/run/q.sock")

    func value(after flag: String, in args: [String]) -> String? {
        guard let index = args.firstIndex(of: flag), index + 1 < args.count else { return nil }
        return args[index + 1]
    }

    @Test func kernelBootKeepsEachValueOneArgument() {
        let args = QEMUCommandLine.arguments(for: config)
        // posix_spawn passes these as they are: spaces and quotes stay inside one argv element.
        #expect(value(after: "-kernel", in: args) == "/k dir/vmlinuz")
        #expect(value(after: "-initrd", in: args) == "/i")
        #expect(value(after: "-append", in: args) == "console=ttyS0 a='b c'")
        #expect(value(after: "-m", in: args) == "256")
        #expect(value(after: "-smp", in: args) == "2")
        #expect(value(after: "-accel", in: args) == "tcg,thread=multi")
    }

    @Test func startsPausedWithoutRebootAndWithQMP() {
        let args = QEMUCommandLine.arguments(for: config)
        #expect(args.contains("-S"))
        #expect(args.contains("-no-reboot"))
        #expect(args.contains("-nodefaults"))
        #expect(value(after: "-qmp", in: args) == "unix:/run/q.sock,server=on,wait=off")
        #expect(!args.contains("-incoming"))
    }

    @Test func commasInOptionValuesAreDoubled() {
        let args = QEMUCommandLine.arguments(for: config)
        #expect(value(after: "-name", in: args) == "guest=vm,,1,debug-threads=on")
        #expect(value(after: "-blockdev", in: args)?.contains("file.filename=/d,,x/overlay.qcow2,") == true)
    }

    @Test func nbdDriveNamesTheDiskManagersSocketAndExport() {
        var config = self.config
        config.drive = .init(nbdSocket: "/r,un/nbd.sock", export: "disk")
        let args = QEMUCommandLine.arguments(for: config)
        #expect(value(after: "-blockdev", in: args) == "driver=nbd,node-name=disk0,server.type=unix,server.path=/r,,un/nbd.sock,export=disk")
        #expect(value(after: "-device", in: args) == "virtio-blk-pci,drive=disk0,id=vda")
    }

    @Test func incomingAndDiskBoot() {
        var config = self.config
        config.incoming = true
        config.boot = .disk
        config.drive = nil
        let args = QEMUCommandLine.arguments(for: config)
        #expect(value(after: "-incoming", in: args) == "defer")
        #expect(!args.contains("-kernel"))
        #expect(!args.contains("-blockdev"))
    }

    @Test func oneVCPUUnderTCGRunsSingleThreaded() {
        var config = self.config
        config.vcpus = 1
        #expect(value(after: "-accel", in: QEMUCommandLine.arguments(for: config)) == "tcg,thread=single")
        config.vcpus = 4
        #expect(value(after: "-accel", in: QEMUCommandLine.arguments(for: config)) == "tcg,thread=multi")
    }

    @Test func kvmUsesTheHostCPU() {
        var config = self.config
        config.accel = .kvm
        let args = QEMUCommandLine.arguments(for: config)
        #expect(value(after: "-accel", in: args) == "kvm")
        #expect(value(after: "-cpu", in: args) == "host")
    }

    @Test func cpuModelIsPassedAsGivenAndDefaultsByAccelerator() {
        var config = self.config
        config.accel = .tcg
        #expect(value(after: "-cpu", in: QEMUCommandLine.arguments(for: config)) == "max", "no model: what older VMs ran with")
        config.cpuModel = "qemu64,+ssse3"
        #expect(value(after: "-cpu", in: QEMUCommandLine.arguments(for: config)) == "qemu64,+ssse3")
        #expect(QEMUCommandLine.defaultCPUModel(for: .tcg) == QEMUCommandLine.tcgCPUModel)
        #expect(QEMUCommandLine.defaultCPUModel(for: .kvm) == "host")
    }

    @Test func ramPaddingMakesTheBlockNoMultipleOf256KiB() {
        var config = self.config
        #expect(value(after: "-m", in: QEMUCommandLine.arguments(for: config)) == "\(config.memoryMiB)")
        config.ramPaddingKiB = QEMUCommandLine.ramPaddingKiB
        let kib = config.memoryMiB * 1024 + QEMUCommandLine.ramPaddingKiB
        #expect(value(after: "-m", in: QEMUCommandLine.arguments(for: config)) == "\(kib)k")
        #expect(kib % 256 != 0 && kib % 8 == 0, "not whole 64-page words; QEMU's 8 KiB alignment")
    }
}
