import Testing

@testable import DiskManager

/// A record's disk names the previous record's relatively when both lie in
/// one records directory (so the tree can move), else absolutely.
@Suite struct BackingNameTests {
    @Test func siblingsAreNamedRelatively() {
        #expect(VMDisk.backingName("/h/vms/a/records/R1/disk.qcow2", for: "/h/vms/a/records/R2/disk.qcow2") == "../R1/disk.qcow2")
        #expect(VMDisk.backingName("/h/vms/b/records/R1/disk.qcow2", for: "/h/vms/a/records/R2/disk.qcow2") == "/h/vms/b/records/R1/disk.qcow2")
        #expect(VMDisk.backingName("/h/vms/a/records/R1/disk.qcow2", for: nil) == "/h/vms/a/records/R1/disk.qcow2")
        #expect(VMDisk.backingName("/h/R1/disk.qcow2", for: "/h/R1/disk2.qcow2") == "/h/R1/disk.qcow2")
    }
}
