import CEVMSystem
import Foundation
import Testing
import VMStore

@Suite struct VMNameTests {
    @Test(arguments: ["demo", "a", "vm-1", "job_2.b", String(repeating: "x", count: 64)])
    func accepts(name: String) throws {
        #expect(try VMName(name).value == name)
    }

    @Test(arguments: [
        ("", VMName.Invalid.empty),
        ("a/b", .containsSlash("a/b")),
        ("/etc", .containsSlash("/etc")),
        ("..", .dotDot("..")),
        ("a..b", .dotDot("a..b")),
        (".hidden", .leadingDot(".hidden")),
        ("a b", .badCharacter("a b", " ")),
        ("-x", .badCharacter("-x", "-")),
        ("é", .badCharacter("é", "é")),
        (String(repeating: "x", count: 65), .tooLong(String(repeating: "x", count: 65))),
    ])
    func rejects(name: String, error: VMName.Invalid) {
        #expect(throws: error) { try VMName(name) }
    }

    @Test func messagesNameTheProblem() {
        #expect(VMName.Invalid.containsSlash("a/b").description.contains("'/'"))
        #expect(VMName.Invalid.dotDot("..").description.contains("'..'"))
    }

    @Test func decodingValidates() {
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([VMName].self, from: Data(#"["../x"]"#.utf8)) }
    }
}

@Suite struct VMSpecTests {
    @Test func specRoundTripsThroughItsFile() throws {
        let root = NSTemporaryDirectory() + "cevm-store-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let home = Home(root: root)
        try home.prepare()
        let name = try VMName("vm1")
        let paths = home.vm(name)
        try Files.makeDirectory(paths.directory)
        let spec = VMSpec(
            name: name, memoryMiB: 256, vcpus: 2, cpuset: CPUSet([1]), accel: .auto, machine: "q35",
            boot: .kernel(kernel: "/k", initrd: nil, append: "console=ttyS0"),
            disk: .init(base: "/b.qcow2", baseFormat: "qcow2", sizeBytes: 1 << 26, createdByCEVM: true),
            bundledGuest: false, readyMarker: "ready")
        try paths.writeSpec(spec)
        #expect(try paths.readSpec() == spec)
        #expect(home.vmNames() == [name])
    }

    @Test func cpuModelAndRAMPaddingDefaultAndOlderSpecsHaveNone() throws {
        let name = try VMName("vm1")
        let spec = VMSpec(
            name: name, memoryMiB: 256, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35", boot: .disk, disk: nil,
            bundledGuest: false)
        #expect(spec.cpuModel == VMSpec.automaticCPUModel)
        #expect(spec.ramPaddingKiB == VMSpec.ramPaddingKiB)
        // A spec written before the fields existed decodes without them: no
        // padding, so its records restore into the RAM size they came from.
        var object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(spec)) as? [String: Any] ?? [:]
        object.removeValue(forKey: "cpuModel")
        object.removeValue(forKey: "ramPaddingKiB")
        let older = try JSONDecoder().decode(VMSpec.self, from: JSONSerialization.data(withJSONObject: object))
        #expect(older.cpuModel == nil && older.ramPaddingKiB == nil)
        for good in ["qemu64", "qemu64,+ssse3,-la57", "Skylake-Client-v4", "max,la57=off"] {
            #expect(VMSpec.isValidCPUModel(good), "\(good)")
        }
        for bad in ["", ",qemu64", "max;rm", "a b", "qemu64\n", "-cpu", String(repeating: "x", count: 300)] {
            #expect(!VMSpec.isValidCPUModel(bad), "\(bad)")
        }
    }

    @Test func corruptSpecIsReportedWithItsPath() throws {
        let root = NSTemporaryDirectory() + "cevm-store-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let home = Home(root: root)
        let paths = home.vm(try VMName("bad"))
        try Files.makeDirectory(paths.directory)
        try Files.writeAtomically(Array("{not json".utf8), to: paths.spec)
        do {
            _ = try paths.readSpec()
            Issue.record("a corrupt spec was accepted")
        } catch {
            #expect("\(error)".contains(paths.spec))
        }
    }

    @Test func overlongSocketPathsAreRefused() throws {
        let home = Home(root: "/tmp/" + String(repeating: "d", count: 90))
        #expect(throws: StoreError.self) { try home.vm(try VMName("vm")).checkSocketPaths() }
        #expect(throws: Never.self) { try Home(root: "/tmp/h").vm(try VMName("vm")).checkSocketPaths() }
    }

    @Test func aSocketIsCreatedOnlyWhereItCanBe() throws {
        let dir = NSTemporaryDirectory() + "cevm-sock-\(getpid())"
        try Files.makeDirectory(dir, mode: 0o700)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(VMPaths.problemCreatingSocket(at: "\(dir)/s.sock") == nil)
        let long = "\(dir)/" + String(repeating: "s", count: 120)
        #expect(VMPaths.problemCreatingSocket(at: long)?.contains("may have at most 107") == true)
        try Files.writeAtomically(Array("x".utf8), to: "\(dir)/file")
        #expect(VMPaths.problemCreatingSocket(at: "\(dir)/file")?.contains("is not a socket") == true)
        #expect(VMPaths.problemCreatingSocket(at: "\(dir)/missing/s.sock")?.contains("is not a directory") == true)
    }
}
