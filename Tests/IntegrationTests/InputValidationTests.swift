#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Testing

/// The real binary refuses out-of-range numbers with a message and exit
/// status 1 (a trap would end it by a signal instead).
@Suite(.enabled(if: Files.exists(CEVMHarness.binaryPath), "needs the cevm binary"))
struct InputValidationCLITests {
    @Test(arguments: ["nan", "inf", "1e300"])
    func bootGraceOutOfRangeIsAnError(value: String) throws {
        let cevm = try CEVMHarness()
        for command in ["run", "supervise"] {
            let result = try cevm.run([command, "v", "--boot-grace", value])
            #expect(result.status == 1, "\(command): exit \(result.status)")
            #expect(result.stderr.hasPrefix("cevm: error: --boot-grace ") && result.stderr.contains("is out of range"), "\(result.stderr)")
        }
        #expect(!Files.exists("\(cevm.home)/vms/v"), "nothing was made")
    }
}
