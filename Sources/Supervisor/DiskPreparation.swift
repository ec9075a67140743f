import CEVMSystem
import QEMU
import VMStore

/// A VM's disk is cevm's own qcow2 overlay T over a read-only base image B.
/// QEMU opens B only as T's backing file, read-only; B is never written.
enum DiskPreparation {
    /// Creates the base (when cevm makes it) and the overlay if missing.
    /// Returns false for a VM without a disk.
    static func prepare(spec: VMSpec, paths: VMPaths) async throws -> Bool {
        guard let disk = spec.disk else { return false }
        if disk.createdByCEVM && !Files.exists(disk.base) {
            if let template = disk.template {
                guard Files.exists(template) else {
                    throw SupervisorError.startFailed(spec.name, "disk template \(template) does not exist (rebuild the bundled guest: make guest)")
                }
                // Converted beside the base, then renamed: a base exists whole or not at all.
                let partial = disk.base + ".partial"
                Files.remove(partial)
                try await QEMUImg.convert(template, sourceFormat: "raw", to: partial)
                if disk.sizeBytes > (try await QEMUImg.info(partial)).virtualSize {
                    try await QEMUImg.resize(partial, sizeBytes: disk.sizeBytes)
                }
                try Files.rename(partial, to: disk.base)
            } else {
                try await QEMUImg.create(disk.base, sizeBytes: disk.sizeBytes)
            }
        }
        guard Files.exists(disk.base) else {
            throw SupervisorError.startFailed(spec.name, "base image \(disk.base) does not exist")
        }
        if !Files.exists(paths.overlay) {
            try await QEMUImg.createOverlay(paths.overlay, backing: disk.base, backingFormat: disk.baseFormat)
        }
        return true
    }
}
