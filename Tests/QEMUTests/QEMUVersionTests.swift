import QEMU
import Testing

@Suite struct QEMUVersionTests {
    @Test func parsesWhatQEMUPrints() {
        let ten = QEMUVersion(versionOutput: "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright (c) 2003-2025")
        #expect(ten == QEMUVersion(major: 10, minor: 0, micro: 2))
        #expect(QEMUVersion(versionOutput: "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)") == QEMUVersion(major: 7, minor: 2, micro: 22))
        #expect(QEMUVersion(versionOutput: "QEMU emulator version 9.1") == QEMUVersion(major: 9, minor: 1))
        #expect(QEMUVersion(versionOutput: "qemu-img version 10.0.2") == nil)
        #expect(QEMUVersion(versionOutput: "QEMU emulator version x") == nil)
    }

    /// RAM is padded only where QEMU's TCG dirty tracking needs it (before
    /// 9.0); from 9.0 the padding would only select the slow sync path.
    @Test func padsRAMOnlyBeforeTheFix() {
        #expect(QEMUCommandLine.ramPaddingKiB(for: QEMUVersion(major: 7, minor: 2, micro: 22)) == 8)
        #expect(QEMUCommandLine.ramPaddingKiB(for: QEMUVersion(major: 8, minor: 2, micro: 9)) == 8)
        #expect(QEMUCommandLine.ramPaddingKiB(for: QEMUVersion(major: 9, minor: 0)) == 0)
        #expect(QEMUCommandLine.ramPaddingKiB(for: QEMUVersion(major: 10, minor: 0, micro: 2)) == 0)
        #expect(QEMUCommandLine.ramPaddingKiB(for: nil) == 8, "an unknown QEMU gets the safe padding")
    }

    @Test func namesTheOutgoingMigrationThreads() {
        for name in ["live_migration", "mig/src/main", "mig/src/send_0", "multifdsend_1"] {
            #expect(QEMUInstance.isOutgoingMigrationThread(name), "\(name)")
        }
        for name in ["qemu-system-x86", "CPU 0/TCG", "mig/dst/main", "worker", "call_rcu"] {
            #expect(!QEMUInstance.isOutgoingMigrationThread(name), "\(name)")
        }
    }
}
