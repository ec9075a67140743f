import ArgumentParser
import CEVMSystem
import Foundation
import QEMU
import Records
import Supervisor
import VMStore

struct RecordsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "records", abstract: "List a VM's checkpoint records, or export one.",
        subcommands: [RecordsList.self, RecordsExport.self], defaultSubcommand: RecordsList.self)
}

struct RecordsList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List a VM's checkpoint records (`cevm records NAME`).",
        discussion: """
            For each record: its memory's bytes and kind (full, incremental over PARENT, or a version 1 \
            stream) and its disk's bytes and kind (full, or incremental over the record named in PARENT).
            """)

    @Argument(help: "The VM's name.") var name: String?

    @Flag(help: "List group records instead (`cevm checkpoint A B …`): id, members and their records, channel state.")
    var groups = false

    @OptionGroup var common: CommonOptions

    func run() async throws {
        if groups { return try await listGroups() }
        try await Output.reporting {
            guard let name else { throw ValidationError("name a VM (or --groups)") }
            let (_, paths) = try VMArgument.existing(name, in: common.home)
            let records = RecordStore(paths: paths).list()
            if common.json { return try Output.json(records.map { RecordSummary(record: $0) }) }
            var rows = [["ID", "CREATED", "MECHANISM", "PAUSE", "DURABLE", "MEMORY", "MEM-KIND", "DISK", "DISK-KIND", "PARENT"]]
            for record in records {
                let m = record.manifest
                let summary = RecordSummary(record: record)
                let parents = [summary.memoryParent.map { "mem:\($0)" }, m.parent.map { "disk:\($0)" }].compactMap { $0 }
                rows.append([
                    m.id, String(m.createdAt.prefix(19)), m.mechanism.rawValue, ms(m.timings.guestPauseMs),
                    ms(m.timings.requestToDurableMs), formatBytes(summary.memoryBytes), summary.memoryKind,
                    summary.diskBytes.map(formatBytes) ?? "-", summary.diskKind ?? "-",
                    parents.isEmpty ? "-" : parents.joined(separator: " "),
                ])
            }
            Output.line(table(rows))
        }
    }
}

extension RecordsList {
    func listGroups() async throws {
        try await Output.reporting {
            let groups = GroupStore(root: common.home.root).list()
            if common.json { return try Output.json(groups.map(\.manifest)) }
            var rows = [["GROUP", "CREATED", "LARGEST-PAUSE", "COMMIT", "IN-FLIGHT", "MEMBERS"]]
            for group in groups {
                let m = group.manifest
                rows.append([
                    m.id, String(m.createdAt.prefix(19)), ms(m.largestPauseMs), ms(m.requestToCommitMs),
                    "\(m.networks.reduce(0) { $0 + $1.frames }) frame(s)",
                    m.members.map { "\($0.vm):\($0.record)" }.joined(separator: " "),
                ])
            }
            Output.line(table(rows))
        }
    }
}

/// A record as the CLI prints it in JSON: the manifest, where it is, and
/// what it costs on disk.
struct RecordSummary: Encodable {
    var manifest: RecordManifest
    var directory: String
    /// Bytes of the memory files (page image, digests, prologue, epilogue;
    /// or the version 1 stream).
    var memoryBytes: Int64
    /// `full`, `incremental` or `stream-v1`.
    var memoryKind: String
    var memoryParent: String?
    var diskBytes: Int64?
    var diskKind: String?
    var diskParent: String?

    init(record: Record) { self.init(manifest: record.manifest, directory: record.directory) }

    init(manifest m: RecordManifest, directory: String) {
        manifest = m
        self.directory = directory
        memoryBytes = m.files.filter { $0.role == .memory }.reduce(0) { $0 + $1.size }
        memoryKind = m.memory?.kind.rawValue ?? "stream-v1"
        memoryParent = m.memory?.parent
        diskBytes = m.disk == nil ? nil : m.files.filter { $0.role == .disk }.reduce(0) { $0 + $1.size }
        diskKind = m.disk?.kind.rawValue
        diskParent = m.disk == nil ? nil : m.parent
    }
}

struct RecordsExport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a standalone record: memory and disk flattened, kernel and initrd copied.",
        discussion: """
            RECORD is a record's id or its directory; DIR must not exist (or be empty). The export needs \
            nothing of the records tree or the VM's base image: `cevm restore DIR [--name NEW]` starts it \
            on a host with the same QEMU. The record is checked (checksums, memory chain, every page, the \
            base, kernel and initrd against their identities) before anything is written.
            """)

    @Argument(help: "A record id or record directory.") var record: String

    @Argument(help: "The directory to write (must not exist, or be empty).") var directory: String

    @OptionGroup var moved: MovedFiles

    @Option(
        help: """
            cevm (a record `cevm restore` starts) or qemu (the same, plus the memory as one migration \
            stream file and a script that starts plain QEMU on it, without cevm).
            """)
    var format: ExportFormat = .cevm

    enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
        case cevm, qemu
    }

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let home = common.home
            for name in home.vmNames() { try await Retention.recover(store: RecordStore(paths: home.vm(name))) }
            let record = try Restore.locate(record, home: home)
            let destination = Home.absolute(directory)
            Output.progress("verifying \(record.id)…")
            try await Blocking.run { try record.verifyRestorable() }
            let located = try await Restore.locateExternalFiles(record, moved: moved, home: home)
            let moved = try Restore.movedBase(record, located: located)
            Output.progress("exporting \(record.id) to \(destination)…")
            let exported = try await RecordExport.export(
                record, to: destination, located: located, diskSource: moved?.source
            ) { source, output in
                _ = try await Tool.check("qemu-img", ["convert", "-q", "-O", "qcow2", source, output], timeout: .seconds(3600))
            }
            if format == .qemu {
                Output.progress("writing the QEMU stream…")
                try await Blocking.run { try QEMUExport.write(exported) }
            }
            Output.endProgress()
            if common.json { return try Output.json(RecordSummary(record: exported)) }
            Output.line("\(record.id) exported to \(exported.directory) (restore with `cevm restore \(exported.directory)`)")
            if format == .qemu {
                Output.line("without cevm: sh \(exported.directory)/\(QEMUExport.scriptName) (QEMU loads \(QEMUExport.streamName))")
            }
        }
    }
}

/// `records export --format qemu`: what a user needs to leave cevm and keep
/// a checkpoint. Beside the standalone record: the memory as one migration
/// stream (`qemu.mig`: rebuilt from the page image, or a version 1 record's
/// own stream) and `qemu-restore.sh`, which starts QEMU with the VM's own
/// machine options on the exported disk, kernel and initrd and loads the
/// stream (`-incoming file:`). The guest runs on from the checkpoint, its
/// console on the terminal; its writes go to the exported disk.qcow2.
enum QEMUExport {
    static let streamName = "qemu.mig"
    static let scriptName = "qemu-restore.sh"

    static func write(_ record: Record) throws {
        let directory = record.directory
        let stream = "\(directory)/\(streamName)"
        if record.manifest.memory != nil {
            let chain = try MemoryChain(record)
            let fd = open(stream, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd < 0 { throw SystemError("open", errno: errno, subject: stream) }
            defer { close(fd) }
            _ = try chain.writeStream { chunk in try Files.writeAll(fd, chunk, subject: stream) }
            if fsync(fd) != 0 { throw SystemError("fsync", errno: errno, subject: stream) }
        } else if let raw = record.memoryPath {
            try FileManager.default.copyItem(atPath: raw, toPath: stream)
        }
        try Files.writeAtomically(Array(script(record).utf8), to: "\(directory)/\(scriptName)", mode: 0o700)
    }

    /// The shell script: QEMU's arguments as cevm gives them to an instance,
    /// with the record's files named relative to the script's directory.
    static func script(_ record: Record) -> String {
        let spec = record.manifest.spec
        let accel: Accelerator = spec.accel == .kvm ? .kvm : .tcg
        let boot: InstanceConfig.Boot
        switch spec.boot {
        case .kernel(_, let initrd, let append): boot = .kernel(kernel: "kernel", initrd: initrd == nil ? nil : "initrd", append: append)
        case .disk: boot = .disk
        }
        var config = InstanceConfig(
            name: spec.name.value, memoryMiB: spec.memoryMiB, vcpus: spec.vcpus, machine: spec.machine, accel: accel, boot: boot,
            drive: record.manifest.disk == nil ? nil : InstanceConfig.Drive(file: "disk.qcow2", format: "qcow2"),
            qmpSocket: "qmp.sock", incoming: false,
            cpuModel: spec.cpuModel.map { $0 == VMSpec.automaticCPUModel ? QEMUCommandLine.defaultCPUModel(for: accel) : $0 },
            ramPaddingKiB: spec.ramPaddingKiB ?? 0)
        config.incoming = false
        var arguments = QEMUCommandLine.arguments(for: config)
        // Runs once loaded (no -S), answers no QMP, loads the stream file.
        if let s = arguments.firstIndex(of: "-S") { arguments.remove(at: s) }
        if let q = arguments.firstIndex(of: "-qmp") { arguments.removeSubrange(q...(q + 1)) }
        arguments += ["-incoming", "file:\(streamName)"]
        let quoted = arguments.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        return """
            #!/bin/sh
            # Starts record \(record.id) of VM \(spec.name.value) with QEMU alone (QEMU \(record.manifest.qemu.version) made it).
            # Machine options as cevm gave them; the guest continues from the checkpoint.
            cd "$(dirname "$0")" || exit 1
            exec \(QEMUCommandLine.defaultBinary) \(quoted.joined(separator: " ")) "$@"

            """
    }
}
