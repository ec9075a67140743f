#if canImport(Glibc)
import Glibc
#endif
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
        let instance: QEMUInstance = try inner.withLock { inner in
            guard inner.status.state == .running, let instance = inner.instance else { throw SupervisorError.notRunning(name) }
            guard !inner.busy else { throw SupervisorError.busy(name, "a checkpoint is under way") }
            inner.busy = true
            return instance
        }
        defer { inner.withLock { $0.busy = false } }
        switch options.mechanism {
        case .stopAndSave:
            return try await stopAndSave(instance, full: options.full)
        case .cevm:
            return try await cevmCheckpoint(instance, options)
        case .backgroundSnapshot:
            return try await backgroundSnapshot(instance, full: options.full)
        }
    }

    /// Stop-and-save (seed 001's T_cpt): pause, stream memory into the
    /// record, cut the disk (the manager freezes S0), resume; the disk record
    /// is written by the integration while the guest runs again. The guest
    /// does not run while memory is written.
    private func stopAndSave(_ instance: QEMUInstance, full: Bool) async throws -> Record {
        let requested = Timestamp.monotonic()
        let spec = try paths.readSpec()
        let store = RecordStore(paths: paths)
        let id = RecordStore.newID()
        let directory = try store.newRecordDirectory(id: id)
        let qmp = instance.qmp
        let (diskService, previous) = inner.withLock { ($0.disk, $0.lastRecord) }
        var paused = false
        var prepared: VMDisk.PreparedCut?
        var cut: VMDisk.Cut?
        do {
            let sink = try MigrationSink(socketPath: "\(paths.runDirectory)/sink.sock", spoolPath: "\(directory)/memory.mig")
            log("checkpoint \(id): stop-and-save")
            let parameters = try await MigrationSettings.apply(to: qmp)
            let watch = try await MigrationWatch.start(qmp)
            // U, the disk record and the journal, made while the guest still runs.
            prepared = try diskService?.vmDisk.prepareCut(
                recordPath: "\(directory)/\(Self.diskRecordName)", previousRecord: previous?.disk, full: full)
            // `stop` drains and flushes every block device: the overlay on
            // disk is the guest's disk at this instant.
            _ = try await qmp.execute("stop")
            paused = true
            let pausedAt = Timestamp.now()
            let pauseStart = Timestamp.monotonic()
            log("checkpoint \(id): paused; migrating to \(sink.socketPath)")
            _ = try await qmp.execute("migrate", arguments: ["uri": .string("unix:\(sink.socketPath)")])
            let info: JSONValue
            do { info = try await watch.completion() } catch {
                _ = try? await qmp.execute("migrate_cancel")
                throw await sink.failure() ?? error
            }
            log("checkpoint \(id): migration completed")
            let memory = try await sink.finish()
            var files = [memory]
            // The disk cut: QEMU's `stop` flushed the guest's writes to the
            // manager, so T now is the disk at the pause.
            if let diskService, let ready = prepared {
                cut = try diskService.vmDisk.cut(ready)
            }
            _ = try await qmp.execute("cont")
            paused = false
            let resumedAt = Timestamp.now()
            let pauseEnd = Timestamp.monotonic()
            let (diskFiles, diskRecord, parent) = try await finishDiskRecord(
                cut, service: diskService, previous: previous, spec: spec, id: id, directory: directory)
            files += diskFiles
            let manifest = RecordManifest(
                id: id, vm: name, createdAt: pausedAt, mechanism: .stopAndSave, parent: parent, spec: spec,
                qemu: .init(version: qmp.greeting.versionString, package: qmp.greeting.package),
                migration: .init(
                    parameters: parameters, capabilities: [:], totalTimeMs: info["total-time"]?.doubleValue,
                    downtimeMs: info["downtime"]?.doubleValue, streamBytes: memory.size),
                timings: .init(
                    requestToPauseMs: (pauseStart - requested) * 1000, guestPauseMs: (pauseEnd - pauseStart) * 1000,
                    requestToDurableMs: 0, pausedAt: pausedAt, resumedAt: resumedAt),
                files: files, disk: diskRecord)
            var durable = manifest
            durable.timings.requestToDurableMs = (Timestamp.monotonic() - requested) * 1000
            let record = try RecordStore.commit(durable, in: directory)
            if let cut { inner.withLock { $0.lastRecord = (id, cut.recordPath ?? "") } }
            return record
        } catch {
            log("checkpoint \(id) failed: \(error)")
            if paused { _ = try? await qmp.execute("cont") }
            await cleanUpFailedCheckpoint(diskService, prepared: prepared, cut: cut, directory: directory)
            if let error = error as? SupervisorError { throw error }
            throw SupervisorError.checkpointFailed("\(error)")
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
        let entry = RecordManifest.FileEntry(
            name: Self.diskRecordName, role: .disk, size: try Files.size(path), sha256: try FileDigest.sha256(of: path))
        let record = RecordManifest.DiskRecord(
            file: Self.diskRecordName, kind: cut.incremental || spec.disk?.record != nil ? .incremental : .full,
            backing: cut.backing, backingFormat: cut.backingFormat)
        return ([entry], record, cut.incremental ? previous?.id : spec.disk?.record)
    }

    /// After a failed checkpoint: the disk stays whole (a prepared cut never
    /// made is abandoned, a cut made is finished and its record forgotten so
    /// the next one is not built on it) and the partial record goes.
    func cleanUpFailedCheckpoint(
        _ service: DiskService?, prepared: VMDisk.PreparedCut?, cut: VMDisk.Cut?, directory: String
    ) async {
        if let service {
            if cut == nil, let prepared { service.vmDisk.abandon(prepared) }
            if let cut {
                service.vmDisk.forgetLastRecord()
                inner.withLock { $0.lastRecord = nil }
                if !cut.integration.isFinished { _ = try? await service.vmDisk.finish(cut) }
            }
        }
        RecordStore.discard(directory)
    }

    /// Feeds a record's memory stream into an instance started with
    /// `-incoming defer`, then lets the guest run.
    func restoreMemory(into instance: QEMUInstance, from recordDirectory: String) async throws {
        let record = try Record.load(directory: recordDirectory)
        guard let memory = record.memoryPath else { throw SupervisorError.restoreFailed("the record has no memory stream") }
        let qmp = instance.qmp
        let socket = "\(paths.runDirectory)/incoming.sock"
        unlink(socket)
        do {
            let watch = try await MigrationWatch.start(qmp)
            _ = try await qmp.execute("migrate-incoming", arguments: ["uri": .string("unix:\(socket)")])
            let sent = try await MigrationSource.feed(file: memory, socketPath: socket)
            _ = try await watch.completion()
            unlink(socket)
            try await instance.resume()
            try? Files.writeAll(
                try Files.openForAppend(paths.supervisorLog),
                Array("\(Timestamp.now()) restored \(record.id): \(sent) bytes of memory stream\n".utf8))
        } catch let error as SupervisorError {
            throw SupervisorError.restoreFailed("\(error)")
        } catch {
            throw SupervisorError.restoreFailed("\(error)")
        }
    }
}
