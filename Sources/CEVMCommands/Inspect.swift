import ArgumentParser
import DiskTools
import Foundation
import QCOW2

/// `cevm inspect`: a directory listing or a file from the guest filesystem
/// inside a disk image, read-only, without booting the VM.
struct Inspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a directory or print a file from the guest filesystem in a disk image (read-only).",
        discussion: """
            RECORD|IMAGE is a qcow2 or raw image, or a directory holding disk.qcow2. \
            The whole backing chain is read. Uses libguestfs, which starts a small appliance (seconds).
            """)

    @Argument(help: "A record directory (holding disk.qcow2) or a disk image.") var target: String
    @Argument(help: "A path in the guest filesystem.") var path: String = "/"
    @Flag(name: .long, inversion: .prefixedNo, help: "Run the libguestfs appliance under TCG (no KVM).")
    var tcg = true

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let image = try Self.resolveImage(target)
            let format = try QCOW2Image.probeFormat(path: image)
            let inspector = try GuestInspector(image: image, format: format, forceTCG: tcg)
            switch try inspector.look(at: path) {
            case .directory(let entries):
                if common.json { return try Output.json(entries) }
                Output.line(entries.map { "\($0.isDirectory ? "d" : "-") \(String($0.size).padding(toLength: 10, withPad: " ", startingAt: 0)) \($0.name)" }.joined(separator: "\n"))
            case .file(let bytes):
                FileHandle.standardOutput.write(Data(bytes))
            }
        }
    }

    /// An image path, or `disk.qcow2` inside a directory.
    static func resolveImage(_ target: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: target, isDirectory: &isDirectory) else {
            throw CLIError("\(target) does not exist")
        }
        if isDirectory.boolValue {
            let disk = (target as NSString).appendingPathComponent("disk.qcow2")
            guard FileManager.default.fileExists(atPath: disk) else { throw DiskToolsError.notAnImage(path: target) }
            return disk
        }
        return target
    }
}
