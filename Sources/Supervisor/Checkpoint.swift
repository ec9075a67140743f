#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QEMU
import QMP
import Records
import VMStore

/// Migration parameters cevm sets before every migration: QEMU's default
/// 128 MiB/s bandwidth cap is lifted.
enum MigrationSettings {
    static let maxBandwidth: Int64 = 1 << 40  // bytes/s

    static func apply(to qmp: QMPClient) async throws -> [String: Int64] {
        let parameters: [String: Int64] = ["max-bandwidth": maxBandwidth]
        let arguments: [String: JSONValue]? = parameters.mapValues { JSONValue.int($0) }
        _ = try await qmp.execute("migrate-set-parameters", arguments: arguments)
        return parameters
    }

    /// Polls query-migrate until the migration completes; throws when it fails.
    static func waitForCompletion(_ qmp: QMPClient, timeout: Duration = .seconds(600)) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        while true {
            let info = try await qmp.execute("query-migrate")
            switch info["status"]?.stringValue {
            case "completed": return info
            case "failed", "cancelled":
                throw SupervisorError.checkpointFailed("migration \(info["status"]?.stringValue ?? ""): \(info["error-desc"]?.stringValue ?? "no reason given")")
            default:
                if ContinuousClock.now > deadline { throw SupervisorError.checkpointFailed("migration not done after \(timeout)") }
                try await Task.sleep(for: .milliseconds(5))
            }
        }
    }
}

extension Supervisor {
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
            return try await stopAndSave(instance)
        case .cevm, .backgroundSnapshot:
            throw SupervisorError.checkpointFailed("mechanism \(options.mechanism.rawValue) is not available yet; use stop-and-save")
        }
    }

    /// Stop-and-save (seed 001's T_cpt): pause, stream memory into the
    /// record, copy the flushed overlay, resume. The guest does not run
    /// while memory and disk are written.
    private func stopAndSave(_ instance: QEMUInstance) async throws -> Record {
        let requested = Timestamp.monotonic()
        let spec = try paths.readSpec()
        let store = RecordStore(paths: paths)
        let id = RecordStore.newID()
        let directory = try store.newRecordDirectory(id: id)
        let qmp = instance.qmp
        var paused = false
        do {
            let sink = try MigrationSink(socketPath: "\(paths.runDirectory)/sink.sock", spoolPath: "\(directory)/memory.mig")
            log("checkpoint \(id): stop-and-save")
            let parameters = try await MigrationSettings.apply(to: qmp)
            // `stop` drains and flushes every block device: the overlay on
            // disk is the guest's disk at this instant.
            _ = try await qmp.execute("stop")
            paused = true
            let pausedAt = Timestamp.now()
            let pauseStart = Timestamp.monotonic()
            log("checkpoint \(id): paused; migrating to \(sink.socketPath)")
            _ = try await qmp.execute("migrate", arguments: ["uri": .string("unix:\(sink.socketPath)")])
            let info: JSONValue
            do { info = try await MigrationSettings.waitForCompletion(qmp) } catch {
                _ = try? await qmp.execute("migrate_cancel")
                throw await sink.failure() ?? error
            }
            log("checkpoint \(id): migration completed")
            let memory = try await sink.finish()
            var files = [memory]
            var diskRecord: RecordManifest.DiskRecord?
            if let disk = spec.disk {
                files.append(try FileCopy.copy(paths.overlay, to: "\(directory)/disk.qcow2", role: .disk))
                diskRecord = .init(
                    file: "disk.qcow2", kind: disk.record == nil ? .full : .incremental, backing: disk.base,
                    backingFormat: disk.baseFormat)
            }
            _ = try await qmp.execute("cont")
            paused = false
            let resumedAt = Timestamp.now()
            let pauseEnd = Timestamp.monotonic()
            let manifest = RecordManifest(
                id: id, vm: name, createdAt: pausedAt, mechanism: .stopAndSave, parent: spec.disk?.record, spec: spec,
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
            return try RecordStore.commit(durable, in: directory)
        } catch {
            log("checkpoint \(id) failed: \(error)")
            if paused { _ = try? await qmp.execute("cont") }
            RecordStore.discard(directory)
            if let error = error as? SupervisorError { throw error }
            throw SupervisorError.checkpointFailed("\(error)")
        }
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
            _ = try await qmp.execute("migrate-incoming", arguments: ["uri": .string("unix:\(socket)")])
            let sent = try await MigrationSource.feed(file: memory, socketPath: socket)
            _ = try await MigrationSettings.waitForCompletion(qmp)
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
