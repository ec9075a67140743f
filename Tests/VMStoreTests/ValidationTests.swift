#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Testing
import VMStore

@Suite struct ValidationTests {
    @Test(arguments: [Double.nan, .infinity, -.infinity, -1, -0.001, 3600.5, 1e300, .greatestFiniteMagnitude])
    func numbersOutsideTheirRangeAreRefused(value: Double) {
        #expect(throws: InvalidValue.self) { try Validate.number(value, "--boot-grace", in: 0...3600, unit: " s") }
        #expect(throws: InvalidValue.self) { try Validate.duration(seconds: value, "--boot-grace", in: 0...3600) }
    }

    @Test(arguments: [0, 0.000001, 2.5, 3600])
    func numbersInsideTheirRangePass(value: Double) throws {
        #expect(try Validate.number(value, "x", in: 0...3600) == value)
        #expect(try Validate.duration(seconds: value, "x", in: 0...3600) == .microseconds(Int64((value * 1_000_000).rounded())))
    }

    @Test func theMessageNamesTheOptionTheValueAndTheRange() {
        let nan = #expect(throws: InvalidValue.self) { try Validate.number(.nan, "--boot-grace", in: 0...3600, unit: " s") }
        #expect(nan?.description == "--boot-grace nan is out of range: expected a finite number from 0 s to 3600 s")
        let keep = #expect(throws: InvalidValue.self) { try Validate.integer(0, "--keep", in: 1...100) }
        #expect(keep?.description == "--keep 0 is out of range: expected an integer from 1 to 100")
    }

    @Test func pidsNameOneProcess() throws {
        try Validate.pid(nil, "qemuPID")
        try Validate.pid(1234, "qemuPID")
        for pid: Int32 in [0, -1, .min] {
            #expect(throws: InvalidValue.self) { try Validate.pid(pid, "qemuPID") }
        }
    }

    func spec() throws -> VMSpec {
        VMSpec(
            name: try VMName("v"), memoryMiB: 128, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35", boot: .disk,
            disk: VMSpec.Disk(base: "/b", baseFormat: "raw", sizeBytes: 1 << 20, createdByCEVM: false), bundledGuest: false)
    }

    @Test func aSpecChecksItsNumbersAndItsQEMUWords() throws {
        try spec().validate()
        var bad = try spec()
        bad.memoryMiB = 8
        #expect(throws: InvalidValue.self) { try bad.validate() }
        bad = try spec()
        bad.vcpus = 0
        #expect(throws: InvalidValue.self) { try bad.validate() }
        bad = try spec()
        bad.machine = "q35,accel=kvm"
        #expect(throws: InvalidValue.self) { try bad.validate() }
        bad = try spec()
        bad.disk?.sizeBytes = -1
        #expect(throws: InvalidValue.self) { try bad.validate() }
    }

    /// Every state file is validated by the process that reads it: a status
    /// naming pid -1 (kill(-1) signals every process) is refused, not used.
    @Test func aStatusFileWithAnImpossiblePidIsRefused() throws {
        let directory = NSTemporaryDirectory() + "cevm-validate-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = Home(root: directory).vm(try VMName("v"))
        try Files.makeDirectory(paths.directory)
        var status = VMStatus(name: try VMName("v"), state: .running)
        status.qemuPID = 4242
        try paths.writeStatus(status)
        #expect(paths.readStatus()?.qemuPID == 4242)
        status.qemuPID = -1
        try StoreCoding.write(status, to: paths.status)
        #expect(paths.readStatus() == nil)
        let error = #expect(throws: StoreError.self) { try StoreCoding.decode(VMStatus.self, from: paths.status) }
        #expect(error?.description.contains("qemuPID -1 is out of range") == true, "\(String(describing: error))")
    }
}
