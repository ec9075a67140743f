#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import DiskManager
import CEVMSystem
import Foundation
import NetSwitchControl
import QEMU
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
            is kept as disk/overlay.before-restore.qcow2. A restore that fails (QEMU refuses the stream, \
            the guest dies at once) puts the VM's overlay and spec back as they were; one that is killed \
            leaves a journal, undone by the next restore or run of the VM.
            """)

    @Argument(help: "A record id or record directory, or a group record's id (every member restored).") var record: String

    @Option(help: "Restore as a VM of this name (default: the record's VM).") var name: String?

    @OptionGroup var moved: MovedFiles

    @Flag(help: .hidden) var paused = false

    @Option(help: "A group restore: restore every member as NAME+SUFFIX, on copies of its networks named NET+SUFFIX (created when missing); a suffix starting with - is given as --suffix=-copy.")
    var suffix: String?

    @Option(help: "Attach the restored VM's NICs to copies of their cevm networks, named NET+SUFFIX (created when missing): a copy restored with --name beside its running original cannot join the original's network, where its MAC is taken (a suffix starting with - is given as --network-suffix=-copy).")
    var networkSuffix: String?

    @OptionGroup var common: CommonOptions

    func run() async throws {
        if GroupStore.isGroupID(record) && Files.isDirectory("\(GroupStore(root: common.home.root).directory)/\(record)") {
            if name != nil || moved.kernel != nil || moved.initrd != nil || moved.base != nil {
                throw ValidationError("a group restore takes no --name, --kernel, --initrd or --base: each member restores into its own name")
            }
            return try await GroupRestore(home: common.home, id: record, suffix: suffix, json: common.json).run()
        }
        if suffix != nil { throw ValidationError("--suffix is for a group restore (a group id); a single record restores under another name with --name") }
        try await Output.reporting {
            let started = Timestamp.monotonic()
            let home = common.home
            // A retention merge a crash interrupted leaves a record's manifest stale: finish it first.
            for name in home.vmNames() { try await Retention.recover(store: RecordStore(paths: home.vm(name))) }
            let record = try Self.locate(record, home: home)
            Output.progress("verifying \(record.id)…")
            // Every file against its SHA-256; record format 2: the memory
            // chain (parents found by id in the same records tree, each
            // one's files checked), every page against its digest; then the
            // files outside the tree (base, kernel, initrd) against their
            // identities — all before anything starts.
            try await Blocking.run { try record.verifyRestorable() }
            let verified = Timestamp.monotonic()
            let located = try await Self.locateExternalFiles(record, moved: moved, home: home)
            let movedBase = try Self.movedBase(record, located: located)
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
            spec.boot = record.resolvedBoot(located: located)
            if let networkSuffix {
                // A copy on copies of its networks, made when missing.
                spec.nics = try spec.nics.map { nic in
                    guard let network = nic.networkName else { return nic }
                    let copy = try parseNetworkName(network + networkSuffix)
                    if !Files.exists(NetPaths(root: home.root, name: copy).directory) {
                        try Files.makeDirectory(NetPaths(root: home.root, name: copy).directory, mode: 0o700)
                    }
                    var renamed = nic
                    renamed.attachment = .network(name: copy.value)
                    return renamed
                }
            }
            try await ensureNetworks(of: spec, home: home)
            try home.prepare()
            try Files.makeDirectory(paths.directory, mode: 0o700)
            // A restore killed before it finished left its journal: undo it first.
            if let recovered = await RestoreJournal.recover(paths) { Output.notice(recovered) }
            // From here on every change to the VM's directory is journaled
            // before it is made, so that a restore that fails, or is killed,
            // leaves it as it was.
            var changes = try RestoreJournal.begin(paths: paths, record: record.id)
            let status: VMStatus
            do {
                if let disk = record.manifest.spec.disk, let recordDisk = record.diskPath {
                    var diskBase = recordDisk
                    if let movedBase {
                        // The record's disk names its base by the old path: the
                        // restored VM gets a copy of the record's clusters over
                        // the moved base instead (the record is never written).
                        Output.progress("rebasing \(record.id)'s disk onto \(movedBase.path)…")
                        try Files.makeDirectory(paths.diskDirectory, mode: 0o700)
                        diskBase = "\(paths.diskDirectory)/record-\(record.id).qcow2"
                        // Converted beside it, then renamed: one made by an
                        // earlier restore stays whole if this one fails.
                        let partial = diskBase + ".partial"
                        Files.remove(partial)
                        if !Files.exists(diskBase) { try changes.note { $0.madeRecordDisk = diskBase } }
                        do {
                            try await Tool.check(
                                "qemu-img", ["convert", "-q", "-O", "qcow2", "-B", movedBase.path, "-F", movedBase.format, movedBase.source, partial],
                                timeout: .seconds(3600))
                            try Files.rename(partial, to: diskBase)
                        } catch {
                            Files.remove(partial)
                            throw error
                        }
                    }
                    spec.disk = VMSpec.Disk(
                        base: diskBase, baseFormat: "qcow2", sizeBytes: disk.sizeBytes, createdByCEVM: false, record: record.id)
                }
                try changes.saveSpec()
                try paths.writeSpec(spec)
                // The VM's disk from now on: a new overlay over the record's disk.
                // The overlay it had is kept aside, not deleted: it holds writes
                // the guest made after the checkpoint, which a user may still want.
                if Files.exists(paths.overlay) {
                    // A checkpoint the lost VM did not finish left two overlays: merge them first.
                    _ = try VMDisk.recover(directory: paths.diskDirectory)
                    try changes.note { $0.movedOverlayAside = true }
                    if rename(paths.overlay, RestoreJournal.aside(paths)) != 0 {
                        throw SystemError("rename", errno: errno, subject: paths.overlay)
                    }
                }
                // No overlay now: the one the supervisor makes is this restore's.
                try changes.note { $0.overlayIsNew = true }
                status = try await SupervisorLauncher.startDetached(
                    home: home, name: target,
                    // Every page was checked above, before anything changed:
                    // the supervisor streams them without hashing them again.
                    arguments: ["--restore", record.directory, "--boot-grace", "1", "--restore-pages-checked"] + (paused ? ["--paused"] : []))
            } catch {
                throw await changes.undo(after: error)
            }
            Output.endProgress()
            guard status.state == .running || (paused && status.state == .paused) else {
                let error = CLIError(status.message ?? "restore of \(record.id) ended \(status.state.rawValue)")
                let undone = await changes.undo(after: error)
                if common.json { return try Output.json(status) }
                throw undone
            }
            changes.finish()
            if common.json { return try Output.json(status) }
            // The measured restart time, for `cevm report --mtbf`: request to
            // the guest running, as the supervisor saw it resume (else now).
            var timing = Timing(record: record.id, seconds: Timestamp.monotonic() - started, at: Timestamp.now())
            if let phases = RestoreTiming.read(paths, record: record.id), phases.launched >= verified {
                timing.seconds = phases.running - started
                timing.phases = [
                    "verified": verified - started, "launched": phases.launched - started, "streamed": phases.streamed - started,
                    "loaded": phases.loaded - started, "running": phases.running - started,
                ]
            }
            // A member of a group restore runs only when its group does: its
            // time to running is not this restore's.
            if !paused, let line = try? JSONEncoder().encode(timing), let fd = try? Files.openForAppend(paths.restoreTimes) {
                try? Files.writeAll(fd, Array(line) + [0x0a], subject: paths.restoreTimes)
                close(fd)
            }
            Output.line(
                "\(target) restored from \(record.id) and \(paused ? "held paused" : "running") (qemu pid \(status.qemuPID.map(String.init) ?? "?"))")
        }
    }

    /// One measured restore: verification, start of QEMU, memory streamed in, guest running.
    struct Timing: Codable {
        var record: String
        /// Request to the guest running.
        var seconds: Double
        var at: String
        /// Seconds from the request: "verified" (files checked), "launched"
        /// (QEMU answering), "streamed" (memory sent), "loaded" (QEMU done
        /// loading), "running" (`cont` answered). nil in older lines, and
        /// when the supervisor's figures were missing (`seconds` then runs
        /// to the VM counting as running, a boot grace later).
        var phases: [String: Double]?
    }

    /// The record's external files, each where the user points (`--kernel`,
    /// `--initrd`, `--base`) or where the manifest says, checked against its
    /// size and SHA-256 (remembered in the home's identity cache).
    static func locateExternalFiles(
        _ record: Record, moved: MovedFiles, home: Home
    ) async throws -> [ExternalFile.Role: String] {
        var overrides: [ExternalFile.Role: String] = [:]
        overrides[.kernel] = moved.kernel.map(Home.absolute)
        overrides[.initrd] = moved.initrd.map(Home.absolute)
        overrides[.base] = moved.base.map(Home.absolute)
        let recorded = Set((record.manifest.external ?? []).map(\.role))
        for (role, path) in overrides where !recorded.contains(role) {
            throw CLIError("record \(record.id) names no \(role.rawValue) with an identity: --\(role.rawValue) \(path) cannot be checked")
        }
        _ = try? Files.makeDirectory(home.cacheDirectory, mode: 0o700)
        let cache = IdentityCache(path: "\(home.cacheDirectory)/identities.json")
        return try await Blocking.run { [overrides] in try record.locateExternalFiles(overrides: overrides, cache: cache) }
    }

    /// A base image the user pointed at elsewhere than where the record's
    /// disk chain names it: the qemu-img source of the chain with that
    /// bottom replaced.
    static func movedBase(_ record: Record, located: [ExternalFile.Role: String]) throws -> (path: String, format: String, source: String)? {
        guard let recorded = record.manifest.external?.first(where: { $0.role == .base }), let path = located[.base],
            path != recorded.resolved(in: record.directory), let recordDisk = record.diskPath
        else { return nil }
        guard let chain = DiskChain.source(top: recordDisk, bottom: recorded.path, replacement: path) else {
            throw CLIError("the disk chain of \(recordDisk) does not end at \(recorded.path): --base cannot replace it")
        }
        return (path, chain.bottomFormat, chain.source)
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

/// Where a record's files from outside its records tree went, when they
/// moved: each is checked against the identity the record holds.
struct MovedFiles: ParsableArguments {
    @Option(help: "The record's kernel, moved: a copy with the recorded size and SHA-256.") var kernel: String?

    @Option(help: "The record's initrd, moved: a copy with the recorded size and SHA-256.") var initrd: String?

    @Option(help: "The VM's base image, moved: a copy with the recorded size and SHA-256.") var base: String?
}
