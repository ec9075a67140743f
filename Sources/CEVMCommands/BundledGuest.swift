import CEVMSystem
import Foundation

/// The bundled guest built by `scripts/build-guest`: Debian's cloud kernel
/// and an initramfs running cevm's workload.
struct BundledGuest {
    let directory: String
    var kernel: String { "\(directory)/vmlinuz" }
    var initrd: String { "\(directory)/initrd.img" }
    var manifest: String { "\(directory)/guest.json" }
    /// The disk template (raw ext2 with the workload's records and log).
    var disk: String { "\(directory)/disk.img" }
    /// The kernel's module tree, for libguestfs's appliance (cevm inspect).
    var modules: String { "\(directory)/modules" }

    /// The workload's first console line: the guest has booted.
    static let readyMarker = "cevm-workload start"

    private struct Manifest: Decodable {
        var kernel: String
        var append: String
    }

    /// `$CEVM_GUEST_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/cevm/guest`.
    static func locate() -> BundledGuest {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["CEVM_GUEST_DIR"], !dir.isEmpty { return BundledGuest(directory: dir) }
        let cache = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "\(env["HOME"] ?? "/root")/.cache"
        return BundledGuest(directory: "\(cache)/cevm/guest")
    }

    /// The default kernel command line, checking the guest is built.
    func defaultAppend() throws -> String {
        for file in [kernel, initrd, manifest, disk] where !Files.exists(file) {
            throw CLIError("the bundled guest is not built (\(file) is missing): run `make guest` or scripts/build-guest")
        }
        do {
            return try JSONDecoder().decode(Manifest.self, from: Data(Files.read(manifest))).append
        } catch {
            throw CLIError("the bundled guest's \(manifest) is unreadable (\(error)): rebuild it with scripts/build-guest")
        }
    }
}
