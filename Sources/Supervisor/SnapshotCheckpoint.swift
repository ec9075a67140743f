#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import CheckpointProtocol
import Control
import DiskManager
import Foundation
import QEMU
import QMP
import Records
import Synchronization
import VMStore

extension Supervisor {
    /// Stop-and-save or background-snapshot: the VM is checkpointed in its
    /// own instance; `SnapshotMachine` decides, `SnapshotRun` acts.
    func snapshotCheckpoint(_ instance: QEMUInstance, kind: SnapshotMachine.Kind, options: CheckpointOptions) async throws -> Record {
        let context = await state.checkpointContext(newInstance: false)
        let run = try SnapshotRun(supervisor: self, instance: instance, kind: kind, options: options, context: context)
        log("checkpoint \(run.id): \(kind.rawValue)")
        var machine = SnapshotMachine(kind: kind)
        await drive(&machine, run)
        if let failure = machine.failure {
            log("checkpoint \(run.id) (\(kind.rawValue)) failed: \(failure)")
            throw SupervisorError.checkpointFailed("\(failure)")
        }
        guard let record = run.made.withLock({ $0.record }) else {
            throw SupervisorError.checkpointFailed("the checkpoint ended while \(machine.phaseName)")
        }
        return record
    }

    static func setBackgroundSnapshot(_ qmp: QMPClient, _ on: Bool) async throws {
        try await MigrationSettings.setCapability(qmp, "background-snapshot", on)
    }
}

/// One stop-and-save or background-snapshot checkpoint: its resources and
/// figures, and how each action of `SnapshotMachine` is carried out.
final class SnapshotRun: CheckpointRun {
    typealias Machine = SnapshotMachine

    struct Made: Sendable {
        var sink: MigrationSink?
        var watch: MigrationWatch?
        var parameters: [String: Int64] = [:]
        var prepared: VMDisk.PreparedCut?
        var cut: VMDisk.Cut?
        var pausedAt = ""
        var pausedWall: Double = 0
        var pauseStart: Double = 0
        var resumedAt = ""
        var resumedWall: Double = 0
        var pauseEnd: Double = 0
        var info: JSONValue = .object([:])
        var memory: RecordedMemory?
        var disk: (files: [RecordManifest.FileEntry], disk: RecordManifest.DiskRecord?, parent: String?)?
        var phases: [String: Double] = [:]
        var record: Record?
    }

    let supervisor: Supervisor
    let instance: QEMUInstance
    let kind: SnapshotMachine.Kind
    let full: Bool
    /// A member of this group checkpoint: its networks are cut at the pause.
    let group: String?
    let spec: VMSpec
    let id: String
    let directory: String
    let diskService: DiskService?
    let previous: (id: String, disk: String)?
    let console: ConsoleLog?
    /// How the sink records the stream (record format 1 or 2).
    let recording: StreamRecording.Plan
    let requested = Timestamp.monotonic()
    let made = Mutex(Made())

    var qmp: QMPClient { instance.qmp }

    init(supervisor: Supervisor, instance: QEMUInstance, kind: SnapshotMachine.Kind, options: CheckpointOptions, context: CheckpointContext) throws {
        self.supervisor = supervisor
        self.instance = instance
        self.kind = kind
        self.full = options.full
        self.group = options.group
        spec = try supervisor.paths.readSpec()
        (diskService, previous, console) = (context.disk, context.previous, context.console)
        id = RecordStore.newID()
        directory = try RecordStore(paths: supervisor.paths).newRecordDirectory(id: id)
        recording = supervisor.memoryRecording(options, directory: directory, previous: context.previousMemory, ramBytes: Int64(spec.memoryMiB) << 20)
    }

    func mark(_ phase: String) {
        let ms = (Timestamp.monotonic() - requested) * 1000
        made.withLock { $0.phases[phase] = ms }
    }

    func observe(_ event: SnapshotMachine.Event) {}

    /// The instance's end from the start; from the migration's start, the
    /// migration's end, the sink's failure and the timer.
    func watches(startedWith action: SnapshotMachine.Action?, report: @escaping @Sendable (SnapshotMachine.Event) -> Void)
        -> [@Sendable () async -> Void]
    {
        let instance = self.instance
        switch action {
        case nil:
            return [
                Self.exitWatch({ await instance.endedUnasked() }, report: report, event: .exited(.instance))
            ]
        case .startMigration?:
            let (watch, sink) = made.withLock { ($0.watch, $0.sink) }
            var watches: [@Sendable () async -> Void] = [Self.timer(Supervisor.migrationTimeout, report: report, event: .timedOut)]
            if let watch {
                watches.append { [self] in
                    do {
                        let info = try await watch.completion(timeout: .seconds(86_400))
                        self.made.withLock { $0.info = info }
                        report(.sourceCompleted)
                    } catch {
                        if Task.isCancelled { return }
                        // QEMU reports a broken pipe when the sink failed
                        // first (a full disk): the sink's own error is the cause.
                        if let sink, let cause = await sink.failure(grace: .milliseconds(500)) {
                            report(.failed(.sink, "\(cause)"))
                        } else {
                            report(.failed(.migration, "\(error)"))
                        }
                    }
                }
            }
            if let sink {
                watches.append {
                    await sink.streamForwarded()
                    if !Task.isCancelled, let failure = sink.failedNow { report(.failed(.sink, "\(failure)")) }
                }
            }
            return watches
        default:
            return []
        }
    }

    func perform(_ action: SnapshotMachine.Action) async -> SnapshotMachine.Event? {
        let part: SnapshotMachine.Part
        switch action {
        case .prepare, .startMigration, .awaitSetup, .cancelMigration, .resetCapabilities: part = .migration
        case .pause, .resume, .resumeGuest: part = .instance
        case .cutDisk, .finishDisk, .releaseDisk: part = .disk
        case .finishMemory, .abortSink: part = .sink
        case .commit, .discardRecord: part = .record
        }
        do {
            switch action {
            case .prepare:
                try await prepare()
                return .prepared
            case .pause:
                // `stop` drains and flushes every block device: the overlay
                // on disk is the guest's disk at this instant.
                _ = try await qmp.execute("stop")
                made.withLock {
                    $0.pausedAt = Timestamp.now()
                    $0.pausedWall = Timestamp.wallSeconds()
                    $0.pauseStart = Timestamp.monotonic()
                }
                return .paused
            case .cutDisk:
                if let diskService, let prepared = made.withLock({ $0.prepared }) {
                    let cut = try diskService.vmDisk.cut(prepared)
                    made.withLock { $0.cut = cut }
                }
                // The guest is paused: the instant of the disk cut is the
                // VM's cut of its networks too.
                if let group {
                    for network in Set(await supervisor.state.networkPorts.map(\.network)).sorted() {
                        try await supervisor.networkPorts.cutInPlace(network: network, vm: supervisor.name, group: group)
                    }
                    mark("networksCut")
                }
                return .diskCut
            case .startMigration:
                guard let sink = made.withLock({ $0.sink }) else { return .failed(.sink, "no sink to migrate into") }
                _ = try await qmp.execute("migrate", arguments: ["uri": .string("unix:\(sink.socketPath)")])
                return .migrationStarted
            case .awaitSetup:
                try await awaitSetup()
                return .setupDone
            case .resume:
                // A background snapshot's QEMU may have restarted the guest itself.
                let running = kind == .backgroundSnapshot ? try await instance.runState() == "running" : false
                if !running { try await instance.resume() }
                made.withLock {
                    $0.resumedAt = Timestamp.now()
                    $0.resumedWall = Timestamp.wallSeconds()
                    $0.pauseEnd = Timestamp.monotonic()
                }
                mark("resumed")
                return .resumed
            case .finishMemory:
                mark("snapshotCompleted")
                // Later migrations (a CEVM checkpoint) must be ordinary ones.
                if kind == .backgroundSnapshot { try await Supervisor.setBackgroundSnapshot(qmp, false) }
                guard let sink = made.withLock({ $0.sink }) else { return .failed(.sink, "no sink") }
                let memory = try await sink.finish()
                mark("memoryDurable")
                made.withLock { $0.memory = memory }
                return .memoryDurable
            case .finishDisk:
                let cut = made.withLock { $0.cut }
                let disk = try await supervisor.finishDiskRecord(
                    cut, service: diskService, previous: previous, spec: spec, id: id, directory: directory)
                mark("diskDurable")
                made.withLock { $0.disk = disk }
                return .diskDurable
            case .commit:
                try await commit()
                return .committed
            case .cancelMigration, .resumeGuest, .resetCapabilities, .abortSink, .releaseDisk, .discardRecord:
                await undo(action)
                return nil
            }
        } catch {
            return .failed(part, "\(error)")
        }
    }

    private func prepare() async throws {
        let sink = try MigrationSink(
            socketPath: "\(supervisor.paths.runDirectory)/sink.sock", recording: recording)
        made.withLock { $0.sink = sink }
        let parameters = try await MigrationSettings.apply(to: qmp)
        if kind == .backgroundSnapshot { try await Supervisor.setBackgroundSnapshot(qmp, true) }
        let watch = try await MigrationWatch.start(qmp)
        made.withLock {
            $0.parameters = parameters
            $0.watch = watch
        }
        // U, the disk record and the journal, made while the guest still runs.
        let prepared = try await supervisor.prepareCut(diskService, directory: directory, previous: previous, full: full)
        made.withLock { $0.prepared = prepared }
        mark("prepared")
    }

    /// The snapshot's setup (device state, write protection) is done once
    /// RAM pages flow (or it already completed).
    private func awaitSetup() async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let info = try await qmp.execute("query-migrate")
            let status = info["status"]?.stringValue ?? ""
            if status == "failed" || status == "cancelled" {
                throw SupervisorError.checkpointFailed(
                    "background snapshot \(status): \(info["error-desc"]?.stringValue ?? "no reason given")")
            }
            if status == "completed" || (info["ram"]?["transferred"]?.intValue ?? 0) > 0 { return }
            if ContinuousClock.now > deadline { throw SupervisorError.checkpointFailed("background snapshot did not start within 30 s") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    private func commit() async throws {
        let state = made.withLock { $0 }
        guard let memory = state.memory else { throw SupervisorError.checkpointFailed("no memory record to commit") }
        // Memory and disk are durable here; the cost window's settle wait is not the record's latency.
        let durable = Timestamp.monotonic()
        let cost = await supervisor.sampler.closeWindow(resumed: state.pauseEnd)
        var timings = RecordManifest.Timings(
            requestToPauseMs: (state.pauseStart - requested) * 1000, guestPauseMs: (state.pauseEnd - state.pauseStart) * 1000,
            requestToDurableMs: 0, pausedAt: state.pausedAt, resumedAt: state.resumedAt)
        timings.phases = state.phases
        if kind == .backgroundSnapshot {
            timings.overlapMs = (durable - state.pauseEnd) * 1000
            timings.consoleGapMs = await console?.interruption(paused: state.pausedWall, resumed: state.resumedWall).map { $0 * 1000 }
        }
        let info = state.info
        var manifest = RecordManifest(
            id: id, vm: supervisor.name, createdAt: state.pausedAt,
            mechanism: kind == .stopAndSave ? .stopAndSave : .backgroundSnapshot,
            parent: state.disk?.parent ?? spec.disk?.record, spec: spec,
            qemu: .init(version: qmp.greeting.versionString, package: qmp.greeting.package),
            migration: .init(
                parameters: state.parameters, capabilities: kind == .backgroundSnapshot ? ["background-snapshot": true] : [:],
                totalTimeMs: info["total-time"]?.doubleValue, downtimeMs: info["downtime"]?.doubleValue, streamBytes: memory.streamBytes),
            timings: timings, files: memory.files + (state.disk?.files ?? []), disk: state.disk?.disk)
        manifest.memory = memory.memory
        manifest.timings.cost = cost
        manifest.timings.requestToDurableMs = (durable - requested) * 1000
        let record = try await supervisor.commitRecord(manifest, in: directory, spec: spec, cut: state.cut)
        made.withLock { $0.record = record }
    }

    func undo(_ action: SnapshotMachine.Action) async {
        let (sink, prepared, cut) = made.withLock { ($0.sink, $0.prepared, $0.cut) }
        switch action {
        case .cancelMigration:
            _ = try? await qmp.execute("migrate_cancel")
        case .resumeGuest:
            if let state = try? await instance.runState(), state != "running" { try? await instance.resume() }
        case .resetCapabilities:
            // QEMU refuses to change a capability while a migration is active.
            for _ in 0..<200 {
                let status = (try? await qmp.execute("query-migrate"))?["status"]?.stringValue ?? ""
                if status != "active" && status != "setup" && status != "cancelling" { break }
                try? await Task.sleep(for: .milliseconds(10))
            }
            try? await Supervisor.setBackgroundSnapshot(qmp, false)
        case .abortSink:
            if let sink {
                sink.abort()
                _ = await sink.failure(grace: .seconds(2))
            }
        case .releaseDisk:
            await supervisor.releaseDisk(diskService, prepared: prepared, cut: cut)
        case .discardRecord:
            RecordStore.discard(directory)
        default:
            break
        }
    }
}
