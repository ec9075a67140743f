#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import DiskManager
import CEVMSystem
import Foundation
import Records
import Supervisor
import VMStore

struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a VM from a checkpoint record.",
        discussion: """
            RECORD is a record's id or its directory. The record's files are checked against their \
            SHA-256 first. The VM continues where the checkpoint was taken, under its own supervisor; \
            restored under its own name, its console log continues. The record itself is never written: \
            the restored VM's disk is a new overlay on top of the record's disk; the overlay it had \
            is kept as disk/overlay.before-restore.qcow2.
            """)

    @Argument(help: "A record id or record directory.") var record: String

    @Option(help: "Restore as a VM of this name (default: the record's VM).") var name: String?

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let started = Timestamp.monotonic()
            let home = common.home
            // A retention merge a crash interrupted leaves a record's manifest stale: finish it first.
            for name in home.vmNames() { try await Retention.recover(store: RecordStore(paths: home.vm(name))) }
            let record = try Self.locate(record, home: home)
            Output.progress("verifying \(record.id)…")
            try record.verify()
            // Record format 2: the memory chain (parents found by id in the
            // same records tree, each one's files checked), then every page
            // against its digest, before anything starts.
            if record.manifest.memory != nil {
                let chain = try MemoryChain(record)
                for parent in chain.records.dropFirst() { try parent.verify() }
                try chain.reader().forEachPage { _, _, _ in }
            }
            let target = try name.map(parseName) ?? record.manifest.vm
            let paths = home.vm(target)
            try paths.checkSocketPaths()
            if let holder = paths.lockHolder {
                if case .supervisor = holder {
                    throw CLIError("VM '\(target)' is running: stop it first, or restore under another name with --name")
                }
                throw SupervisorError.lockHeld(target, holder)
            }
            var spec = record.manifest.spec
            spec.name = target
            if let disk = record.manifest.spec.disk, let recordDisk = record.diskPath {
                spec.disk = VMSpec.Disk(
                    base: recordDisk, baseFormat: "qcow2", sizeBytes: disk.sizeBytes, createdByCEVM: false, record: record.id)
            }
            try home.prepare()
            try Files.makeDirectory(paths.directory, mode: 0o700)
            try paths.writeSpec(spec)
            // The VM's disk from now on: a new overlay over the record's disk.
            // The overlay it had is kept aside, not deleted: it holds writes
            // the guest made after the checkpoint, which a user may still want.
            if Files.exists(paths.overlay) {
                // A checkpoint the lost VM did not finish left two overlays: merge them first.
                _ = try VMDisk.recover(directory: paths.diskDirectory)
                let aside = "\(paths.diskDirectory)/overlay.before-restore.qcow2"
                if rename(paths.overlay, aside) != 0 { throw SystemError("rename", errno: errno, subject: paths.overlay) }
            }
            let status = try await SupervisorLauncher.startDetached(
                home: home, name: target, arguments: ["--restore", record.directory, "--boot-grace", "1"])
            Output.endProgress()
            if common.json { return try Output.json(status) }
            guard status.state == .running else {
                throw CLIError(status.message ?? "restore of \(record.id) ended \(status.state.rawValue)")
            }
            // The measured restart time, for `cevm report --mtbf`.
            let timing = Timing(record: record.id, seconds: Timestamp.monotonic() - started, at: Timestamp.now())
            if let line = try? JSONEncoder().encode(timing), let fd = try? Files.openForAppend(paths.restoreTimes) {
                try? Files.writeAll(fd, Array(line) + [0x0a], subject: paths.restoreTimes)
                close(fd)
            }
            Output.line("\(target) restored from \(record.id) and running (qemu pid \(status.qemuPID.map(String.init) ?? "?"))")
        }
    }

    /// One measured restore: verification, start of QEMU, memory streamed in, guest running.
    struct Timing: Codable {
        var record: String
        var seconds: Double
        var at: String
    }

    /// A record by directory path, or by id among every VM's records.
    static func locate(_ text: String, home: Home) throws -> Record {
        if text.contains("/") {
            return try Record.load(directory: Home.absolute(text))
        }
        guard Record.isPlainID(text) else { throw RecordError.notFound(text) }
        for name in home.vmNames() {
            let directory = "\(RecordStore(paths: home.vm(name)).directory)/\(text)"
            if Files.isDirectory(directory) { return try Record.load(directory: directory) }
        }
        throw RecordError.notFound(text)
    }
}
