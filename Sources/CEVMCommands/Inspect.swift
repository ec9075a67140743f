import ArgumentParser
import CEVMSystem
import DiskTools
import Foundation
import QCOW2
import Records
import VMStore

/// `cevm inspect`: a directory listing or a file from the guest filesystem
/// inside a disk image, read-only, without booting the VM.
struct Inspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a directory or print a file from the guest filesystem in a disk image (read-only).",
        discussion: """
            RECORD|IMAGE is a record id (as `cevm records` lists it), a record directory, or a qcow2 or \
            raw image. The whole backing chain is read, never written. Uses libguestfs, which boots a \
            small appliance (about 20 s under TCG). On a host without a kernel in /boot, the appliance \
            boots the bundled guest's kernel (scripts/build-guest keeps its modules for this).
            """)

    @Argument(help: "A record id, a record directory (holding disk.qcow2) or a disk image.") var target: String
    @Argument(help: "A path in the guest filesystem.") var path: String = "/"
    @Flag(name: .long, inversion: .prefixedNo, help: "Run the libguestfs appliance under TCG (no KVM).")
    var tcg = true

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            guard path.hasPrefix("/") else { throw CLIError("guest path \(path) must be absolute (start with /)") }
            let image = try Self.resolveImage(target, home: Home.fromEnvironment())
            let format = try QCOW2Image.probeFormat(path: image)
            if format == "qcow2" {
                // cevm's own validation first: a hostile header or chain is
                // refused here with a precise error, before libguestfs sees it.
                _ = try QCOW2Image.open(path: image)
            }
            let inspector = try GuestInspector(
                image: image, format: format, forceTCG: tcg, applianceKernel: Self.applianceKernel())
            switch try inspector.look(at: path) {
            case .directory(let entries):
                if common.json { return try Output.json(entries) }
                Output.line(entries.map { "\($0.isDirectory ? "d" : "-") \(String($0.size).padding(toLength: 10, withPad: " ", startingAt: 0)) \($0.name)" }.joined(separator: "\n"))
            case .file(let bytes):
                FileHandle.standardOutput.write(Data(bytes))
            }
        }
    }

    /// An image path, the disk of a record directory, or the disk of a record id.
    static func resolveImage(_ target: String, home: Home) throws -> String {
        if !target.contains("/") && !Files.exists(target) && Record.isPlainID(target) {
            let record = try Restore.locate(target, home: home)
            guard let disk = record.diskPath else { throw CLIError("record \(record.id) has no disk") }
            return disk
        }
        guard Files.exists(target) else { throw CLIError("\(target) does not exist") }
        if Files.isDirectory(target) {
            let disk = "\(target)/disk.qcow2"
            guard Files.exists(disk) else { throw DiskToolsError.notAnImage(path: target) }
            return disk
        }
        return target
    }

    /// The kernel libguestfs's appliance boots when the host has none of its
    /// own in /boot (containers, minimal CI machines): the bundled guest's.
    static func applianceKernel() -> GuestInspector.ApplianceKernel? {
        if ProcessInfo.processInfo.environment["SUPERMIN_KERNEL"] != nil { return nil }
        if ((try? Files.list("/boot")) ?? []).contains(where: { $0.hasPrefix("vmlinuz-") }) { return nil }
        let guest = BundledGuest.locate()
        guard let release = (try? Files.list(guest.modules))?.first else { return nil }
        return GuestInspector.ApplianceKernel(kernel: guest.kernel, modules: "\(guest.modules)/\(release)", release: release)
    }
}
