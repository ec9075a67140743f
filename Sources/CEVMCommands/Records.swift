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

    @OptionGroup var vm: VMArgument

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let (_, paths) = try vm.existing(in: common.home)
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
            Output.endProgress()
            if common.json { return try Output.json(RecordSummary(record: exported)) }
            Output.line("\(record.id) exported to \(exported.directory) (restore with `cevm restore \(exported.directory)`)")
        }
    }
}
