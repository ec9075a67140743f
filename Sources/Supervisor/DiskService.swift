import CEVMSystem
import DiskExportNBD
import DiskManager
import Foundation
import NBDServer
import QEMU
import VMStore

/// The VM's disk served by cevm's disk manager: the overlay T (over B) as
/// the NBD export "disk" on the VM's private run directory. QEMU's drive is
/// this export from the first boot on, so every read, write and flush of the
/// guest goes through the manager, and a checkpoint's disk cut is the
/// manager's integration (Docs/disk-manager.md).
final class DiskService: Sendable {
    static let exportName = "disk"

    let vmDisk: VMDisk
    let server: NBDServer
    let socket: String

    private init(vmDisk: VMDisk, server: NBDServer, socket: String) {
        self.vmDisk = vmDisk
        self.server = server
        self.socket = socket
    }

    /// Opens the disk directory (finishing an integration a crash
    /// interrupted) and starts serving it.
    static func start(paths: VMPaths, log: @escaping @Sendable (String) -> Void) async throws -> DiskService {
        // Opening the disk may finish a merge a crash interrupted: cluster copies, off the pool.
        let directory = paths.diskDirectory
        let vmDisk = try await Blocking.run { try VMDisk(directory: directory) }
        switch vmDisk.recovery {
        case .none: break
        case .journalRemoved:
            log("disk: an interrupted checkpoint had already merged its overlay; journal removed")
        case .merged(let copied, let record):
            log("disk: finished the merge a crash interrupted (\(copied) clusters copied from the old overlay)"
                + (record.map { "; unfinished disk record \($0) removed" } ?? ""))
        }
        let server = NBDServer(configuration: .init(log: { record in
            if record.level >= .warning { log(record.description) }
        }))
        try server.addExport(name: exportName, description: "cevm VM disk", export: DiskExport(disk: vmDisk.disk))
        do {
            try await server.listen(unixSocketPath: paths.nbdSocket)
        } catch {
            await server.shutdown()
            throw error
        }
        return DiskService(vmDisk: vmDisk, server: server, socket: paths.nbdSocket)
    }

    /// QEMU's drive: the export, over the Unix socket.
    var drive: InstanceConfig.Drive { .init(nbdSocket: socket, export: Self.exportName) }

    /// After the instance ended: make what it wrote durable, stop serving.
    func stop() async {
        try? await vmDisk.disk.flush()
        await server.shutdown()
    }
}
