#if canImport(Glibc)
import Glibc
#endif
import Control
import CEVMSystem
import DiskManager
import Foundation
import QEMU
import QMP
import Records
import VMStore

/// Migration parameters cevm sets before every migration: QEMU's default
/// 128 MiB/s bandwidth cap is lifted, and `downtime-limit` is always set (a
/// forced switch-over raises it on a source that may, if the migration then
/// fails, run on and be migrated again).
public enum MigrationSettings {
    public static let maxBandwidth: Int64 = 1 << 40  // bytes/s
    /// QEMU's own default `downtime-limit`.
    public static let defaultDowntimeLimitMs: Int64 = 300
    /// A CEVM checkpoint's default `downtime-limit`, chosen from
    /// `cevm bench checkpoint` (Docs/benchmarks.md, "The pause three ways"):
    /// with QEMU's 300 ms the pre-copy through the tee stopped early with
    /// a large rest to send, and the guest paused 120–290 ms (the host saw
    /// 170–335 ms) where QEMU alone paused 20–100 ms; with 50 ms the pause
    /// fell to 12–78 ms at 256 MiB–2 GiB, the host-observed interruption
    /// below QEMU alone's at its own default, for a stream a few percent longer.
    public static let cevmDowntimeLimitMs: Int64 = 50
    /// The largest `downtime-limit` QEMU 7.2 accepts (2000 s): with it the
    /// next pre-copy round is the last, whatever is left to send.
    static let forcingDowntimeLimitMs: Int64 = 2_000_000

    /// Sets the parameters and returns them as set.
    public static func apply(to qmp: QMPClient, downtimeLimitMs: Int64? = nil) async throws -> [String: Int64] {
        let parameters: [String: Int64] = [
            "max-bandwidth": maxBandwidth, "downtime-limit": downtimeLimitMs ?? defaultDowntimeLimitMs,
        ]
        let arguments: [String: JSONValue]? = parameters.mapValues { JSONValue.int($0) }
        _ = try await qmp.execute("migrate-set-parameters", arguments: arguments)
        return parameters
    }

    /// Turns one migration capability on or off.
    static func setCapability(_ qmp: QMPClient, _ capability: String, _ state: Bool) async throws {
        _ = try await qmp.execute(
            "migrate-set-capabilities",
            arguments: ["capabilities": .array([.object(["capability": .string(capability), "state": .bool(state)])])])
    }
}

extension Supervisor {
    static let diskRecordName = "disk.qcow2"

    /// Takes a checkpoint of the running VM and commits its record. A
    /// failure removes the partial record and leaves the VM running.
    func checkpoint(_ options: CheckpointOptions) async throws -> Record {
        let instance = try await state.beginCheckpoint(name)
        // The cost window opens at the request (the baseline is the sampler's ring).
        _ = sampler.openWindow()
        defer { sampler.abandonWindow() }
        do {
            let record: Record
            switch options.mechanism {
            case .stopAndSave:
                record = try await snapshotCheckpoint(instance, kind: .stopAndSave, options: options)
            case .cevm:
                record = try await cevmCheckpoint(instance, options)
            case .backgroundSnapshot:
                record = try await snapshotCheckpoint(instance, kind: .backgroundSnapshot, options: options)
            }
            await state.endCheckpoint()
            return record
        } catch {
            await state.endCheckpoint()
            throw error
        }
    }

    /// The disk part of a record once its cut was made: waits for the
    /// integration, then returns the disk file's entry, the manifest's disk
    /// record and the parent (the previous record for an incremental one).
    func finishDiskRecord(
        _ cut: VMDisk.Cut?, service: DiskService?, previous: (id: String, disk: String)?, spec: VMSpec, id: String,
        directory: String
    ) async throws -> (files: [RecordManifest.FileEntry], disk: RecordManifest.DiskRecord?, parent: String?) {
        guard let service, let cut else { return ([], nil, spec.disk?.record) }
        let stats = try await service.vmDisk.finish(cut)
        log("checkpoint \(id): disk integrated: \(stats.switchOverClusters) clusters at the cut, "
            + "\(stats.recordClusters) in the record, \(stats.guestRequests) guest requests meanwhile, \(String(format: "%.3f", stats.seconds)) s")
        let path = "\(directory)/\(Self.diskRecordName)"
        let entry = try await Blocking.run {
            RecordManifest.FileEntry(name: Self.diskRecordName, role: .disk, size: try Files.size(path), sha256: try FileDigest.sha256(of: path))
        }
        let record = RecordManifest.DiskRecord(
            file: Self.diskRecordName, kind: cut.incremental || spec.disk?.record != nil ? .incremental : .full,
            backing: cut.backing, backingFormat: cut.backingFormat)
        return ([entry], record, cut.incremental ? previous?.id : spec.disk?.record)
    }

    /// How a checkpoint records the memory stream into `directory`: format 1
    /// spools QEMU's stream; format 2 (the default) keeps its pages, over
    /// the previous page record unless `full` (or there is none, or it is
    /// gone or unreadable, or its chain is `MemoryChain.maxIncrementalDepth`
    /// records deep: the record is then full).
    ///
    /// All three mechanisms' streams parse the same way. A background
    /// snapshot's differs from a pre-copy stream only at its end: QEMU saves
    /// the device state into a buffer at the pause and writes it after the
    /// last PART section, without SWITCHOVER_START or RAM END section
    /// (`MigrationStreamParser.withoutRAMEnd`). Each page comes once, with
    /// its content at the pause (write protection sends a page before the
    /// guest's first write to it, or when the scan reaches it).
    func memoryRecording(_ options: CheckpointOptions, directory: String, previous: String?, ramBytes: Int64) -> StreamRecording.Plan {
        if options.recordFormat == 1 { return .stream(path: "\(directory)/memory.mig") }
        var parent: PageRecorder.Parent?
        if !options.full, let previous {
            let next = PageRecorder.Parent.forNextRecord(after: previous)
            parent = next.parent
            if let why = next.whyFull { log("\(why); this record's memory is full") }
        }
        // A stopped guest waits for the sink, and a background snapshot's
        // guest waits for it on each page it writes before the scan reached
        // it: take the stream into a queue a parser thread follows
        // (`FollowingPageRecorder`), when the records' file system has room
        // for the queue's spool beside the page image (twice the RAM, a
        // bound on both); otherwise parse as it comes. CEVM's tee parses as
        // it comes: its pre-copy stream carries every round's pages, which a
        // parser behind it would have to catch up on after the switch-over.
        if options.mechanism != .cevm, let free = Files.availableBytes(directory), free >= 2 * ramBytes {
            return .spooledPages(directory: directory, parent: parent)
        }
        return .pages(directory: directory, parent: parent)
    }

    /// Commits a checkpoint's record (its files durable): the manifest gets
    /// the identities of the base image, kernel and initrd (hashed once per
    /// file version: the VM's identity cache), is made durable off the
    /// pool, and the record becomes the next one's disk and memory parent.
    func commitRecord(_ manifest: RecordManifest, in directory: String, spec: VMSpec, cut: VMDisk.Cut?) async throws -> Record {
        let identities = IdentityCache(path: "\(paths.directory)/\(ExternalFile.cacheName)")
        let record = try await Blocking.run { [manifest] in
            var stamped = manifest
            stamped.external = ExternalFile.of(spec: spec, cache: identities)
            return try RecordStore.commit(stamped, in: directory)
        }
        if let cut { await state.setLastRecord((record.id, cut.recordPath ?? "")) }
        if record.manifest.memory != nil { await state.setLastMemoryRecord(record.directory) }
        return record
    }

    /// U, the disk record and the journal of a checkpoint's cut (files
    /// created and synced), on a thread of their own; nil without a disk.
    func prepareCut(_ service: DiskService?, directory: String, previous: (id: String, disk: String)?, full: Bool) async throws
        -> VMDisk.PreparedCut?
    {
        guard let vmDisk = service?.vmDisk else { return nil }
        let (recordPath, previousDisk) = ("\(directory)/\(Self.diskRecordName)", previous?.disk)
        return try await Blocking.run { try vmDisk.prepareCut(recordPath: recordPath, previousRecord: previousDisk, full: full) }
    }

    /// After a failed checkpoint the disk stays whole: a prepared cut never
    /// made is abandoned, a cut made is finished and its record forgotten so
    /// the next one is not built on it.
    func releaseDisk(_ service: DiskService?, prepared: VMDisk.PreparedCut?, cut: VMDisk.Cut?) async {
        guard let service else { return }
        if let cut {
            service.vmDisk.forgetLastRecord()
            await state.setLastRecord(nil)
            if !cut.integration.isFinished { _ = try? await service.vmDisk.finish(cut) }
        } else if let prepared {
            service.vmDisk.abandon(prepared)
        }
    }

    /// Feeds a record's memory stream into an instance started with
    /// `-incoming defer`, then lets the guest run.
    func restoreMemory(into instance: QEMUInstance, from recordDirectory: String, resume: Bool = true) async throws {
        let record = try Record.load(directory: recordDirectory)
        // Version 2: the stream rebuilt from the page chain; version 1: the
        // file. Each page is checked against its digest before QEMU loads it,
        // here or, once, by the caller before anything was touched
        // (`restorePagesChecked`: `cevm restore`, whose refusal of a damaged
        // record must come before the VM's disk and spec change).
        let chain = record.manifest.memory == nil ? nil : try MemoryChain(record)
        let memory = record.memoryPath
        guard chain != nil || memory != nil else { throw SupervisorError.restoreFailed("the record has no memory stream") }
        let qmp = instance.qmp
        let socket = "\(paths.runDirectory)/incoming.sock"
        unlink(socket)
        let launched = Timestamp.monotonic()
        do {
            let watch = try await MigrationWatch.start(qmp)
            _ = try await qmp.execute("migrate-incoming", arguments: ["uri": .string("unix:\(socket)")])
            let sent: Int64
            if let chain {
                let checking = !options.restorePagesChecked
                sent = try await MigrationSource.feed(socketPath: socket) { emit in try chain.writeStream(checkingDigests: checking, emit) }
            } else if let memory {
                sent = try await MigrationSource.feed(file: memory, socketPath: socket)
            } else {
                sent = 0
            }
            let streamed = Timestamp.monotonic()
            _ = try await watch.completion()
            let loaded = Timestamp.monotonic()
            unlink(socket)
            if resume {
                try await instance.resume()
                // The restore's phases, for `cevm restore` to record (a failure to
                // write loses only the figures). A member of a group restore is
                // resumed later, by the group: it records none.
                let timing = RestoreTiming(
                    record: record.id, launched: launched, streamed: streamed, loaded: loaded, running: Timestamp.monotonic())
                if let bytes = try? JSONEncoder().encode(timing) {
                    try? Files.writeAtomically(Array(bytes), to: RestoreTiming.path(paths))
                }
            }
            try? Files.writeAll(
                try Files.openForAppend(paths.supervisorLog),
                Array("\(Timestamp.now()) restored \(record.id): \(sent) bytes of memory stream\n".utf8))
        } catch {
            throw SupervisorError.restoreFailed("\(error)" + (await Self.qemuEnded(instance).map { "; QEMU: \($0)" } ?? ""))
        }
    }

    /// QEMU's own words when it ended during a restore (a stream it
    /// refused: "error while loading state for … / load of migration
    /// failed: …"), the last lines of its stderr; nil while it runs. QEMU
    /// closes QMP as it exits, so it is given a moment to end.
    static func qemuEnded(_ instance: QEMUInstance, within wait: Duration = .seconds(2)) async -> String? {
        let deadline = ContinuousClock.now + wait
        while instance.exitReason == nil && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        guard let reason = instance.exitReason else { return nil }
        let tail = QEMUInstance.tail(of: instance.stderrLog, lines: 2).split(separator: "\n").joined(separator: " / ")
        return tail.isEmpty ? "\(reason)" : "\(tail) (\(reason))"
    }
}
