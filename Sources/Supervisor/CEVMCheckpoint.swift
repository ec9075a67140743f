#if canImport(Glibc)
import Glibc
#endif
import Control
import CEVMSystem
import CheckpointProtocol
import DiskManager
import Foundation
import QEMU
import QMP
import Records
import Synchronization
import VMStore

/// The CEVM mechanism (DESIGN.md "The checkpoint, step by step"): the VM
/// moves to a new pinned instance through a stream tee that also spools the
/// record's memory; the guest computes there while the old side serialises.
///
/// `CEVMMachine` decides; this driver carries out its actions, each as a
/// child of one task group that reports back with an event, beside the
/// watches (Old_VM's and New_VM's ends, the tee, the source's migration,
/// the stream's size, the migration timer). The first terminal phase ends
/// the group: every wait still running is cancelled with it.
extension Supervisor {
    /// The pre-copy's bound in time: a migration that has not completed by
    /// then is cancelled.
    static let migrationTimeout: Duration = .seconds(600)

    func cevmCheckpoint(_ old: QEMUInstance, _ options: CheckpointOptions) async throws -> Record {
        let context = await state.checkpointContext(newInstance: true)
        let run = try CEVMRun(supervisor: self, old: old, options: options, context: context)
        log("checkpoint \(run.id): cevm, policy \(run.placement.policy.rawValue): New_VM on \(run.placement.newInstance), "
            + "old side on \(run.placement.oldSide)")
        var machine = CEVMMachine(limits: run.limits)
        await drive(&machine, run)
        switch machine.phase {
        case .committed(let newLost):
            if newLost { log("checkpoint \(run.id): committed; New_VM ended after its switch-over") }
            guard let record = run.made.withLock({ $0.record }) else {
                throw SupervisorError.checkpointFailed("the record was committed but not returned")
            }
            return record
        case .failed(let failure):
            // An instance that ended on its own says why (the guest powered
            // off: its job is done; it panicked; QEMU's status).
            let ends = [("Old_VM", old), ("New_VM", run.made.withLock { $0.new })].compactMap { name, instance -> String? in
                guard let reason = instance?.exitReason, !reason.requested else { return nil }
                return "\(name): \(reason)"
            }
            let message = ends.isEmpty ? "\(failure)" : "\(failure) (\(ends.joined(separator: "; ")))"
            log("checkpoint \(run.id) failed: \(message)")
            throw SupervisorError.checkpointFailed(message)
        default:
            throw SupervisorError.checkpointFailed("the checkpoint ended while \(machine.phase.name)")
        }
    }

    /// The distinct CPU lists the kernel reports for the threads of `pid`
    /// (Cpus_allowed_list), as the manifest's `observed` keeps them: "0",
    /// or "0 | 1" when its threads sit on different sets.
    static func observedSets(of pid: pid_t) -> String {
        Set(((try? Affinity.allowedLists(of: pid)) ?? [:]).values).sorted().joined(separator: " | ")
    }
}

/// One CEVM checkpoint's resources and figures, and how each action of
/// `CEVMMachine` is carried out on them.
final class CEVMRun: CheckpointRun {
    typealias Machine = CEVMMachine

    /// What the checkpoint has made so far.
    struct Made: Sendable {
        var new: QEMUInstance?
        /// New_VM's standby ports on cevm networks, promoted at the switch-over.
        var newPorts: [NetworkPort] = []
        var tee: MigrationSink?
        var prepared: VMDisk.PreparedCut?
        var cut: VMDisk.Cut?
        var incomingWatch: MigrationWatch?
        var sourceWatch: MigrationWatch?
        var oldRunState: RunStateTimes?
        var newRunState: RunStateTimes?
        var parameters: [String: Int64] = [:]
        var migrateStarted: Double = 0
        var forced: RecordManifest.MigrationInfo.ForcedSwitchOver?
        var phases: [String: Double] = [:]
        var observed: [String: String] = [:]
        var info: JSONValue = .object([:])
        var stopped: Double?
        var started: Double?
        var resumedWall: Double = 0
        var memory: RecordedMemory?
        var disk: (files: [RecordManifest.FileEntry], disk: RecordManifest.DiskRecord?, parent: String?)?
        var record: Record?
    }

    let supervisor: Supervisor
    let old: QEMUInstance
    let options: CheckpointOptions
    let spec: VMSpec
    let id: String
    let directory: String
    let placement: Placement
    let index: Int
    let diskService: DiskService?
    let previous: (id: String, disk: String)?
    let console: ConsoleLog
    let limits: CEVMMachine.Limits
    /// How the tee records the stream (record format 1 or 2).
    let recording: StreamRecording.Plan
    let requested = Timestamp.monotonic()
    let requestedWall = Timestamp.wallSeconds()
    let fault = FaultInjection.fromEnvironment
    let made = Mutex(Made())

    /// Places the checkpoint (its affinity policy) and makes its record directory.
    init(supervisor: Supervisor, old: QEMUInstance, options: CheckpointOptions, context: CheckpointContext) throws {
        self.supervisor = supervisor
        self.old = old
        self.options = options
        let paths = supervisor.paths
        spec = try paths.readSpec()
        let (diskService, previous, console, index) = (context.disk, context.previous, context.console, context.index)
        guard let console else { throw SupervisorError.checkpointFailed("the VM has no console log") }
        (self.diskService, self.previous, self.console, self.index) = (diskService, previous, console, index)
        do {
            placement = try Placement.choose(
                policy: options.policy ?? .shared, cpus: options.cpus, checkpointCPUs: options.checkpointCPUs,
                vmCPUs: spec.cpuset, current: old.cpuset, available: try Affinity.available())
        } catch let error as Placement.PlacementError {
            throw SupervisorError.checkpointFailed("\(error)")
        }
        let streamLimit = options.maxStreamBytes ?? CheckpointOptions.defaultMaxStreamBytes(memoryMiB: spec.memoryMiB)
        let (backstop, overflow) = streamLimit.addingReportingOverflow((Int64(spec.memoryMiB) + 512) << 20)
        limits = CEVMMachine.Limits(
            streamBytes: streamLimit, onLimit: (options.onMaxStream ?? .switchOver) == .cancel ? .cancel : .forceSwitchOver,
            backstopBytes: overflow ? Int64.max : backstop)
        id = RecordStore.newID()
        directory = try RecordStore(paths: paths).newRecordDirectory(id: id)
        recording = supervisor.memoryRecording(options, directory: directory, previous: context.previousMemory, ramBytes: Int64(spec.memoryMiB) << 20)
    }

    func log(_ message: String) { supervisor.log("checkpoint \(id): \(message)") }

    func mark(_ phase: String) {
        let ms = (Timestamp.monotonic() - requested) * 1000
        made.withLock { $0.phases[phase] = ms }
    }

    /// The fault-injection hook (tests): its steps are the events that end them.
    func observe(_ event: CEVMMachine.Event) {
        guard let fault else { return }
        let step: FaultInjection.Step?
        switch event {
        case .prepared: step = .prepared
        case .migrationStarted: step = .migrating
        case .adopted: step = .switchedOver
        case .memoryDurable: step = .memoryDurable
        default: step = nil
        }
        guard let step else { return }
        let new = made.withLock { $0.new }
        fault.trigger(at: step, old: old.pid, new: new?.pid) { supervisor.log($0) }
    }

    /// Old_VM's end from the start (before the switch-over the VM dies with
    /// it); from the migration's start, New_VM's end, the tee's end of
    /// stream and its byte count, the source's migration events, the timer.
    func watches(startedWith action: CEVMMachine.Action?, report: @escaping @Sendable (CEVMMachine.Event) -> Void)
        -> [@Sendable () async -> Void]
    {
        let old = self.old
        switch action {
        case nil:
            return [Self.exitWatch({ await old.endedUnasked() }, report: report, event: .exited(.oldVM))]
        case .startMigration?:
            break
        default:
            return []
        }
        let (new, tee, sourceWatch) = made.withLock { ($0.new, $0.tee, $0.sourceWatch) }
        var watches: [@Sendable () async -> Void] = [Self.timer(Supervisor.migrationTimeout, report: report, event: .timedOut)]
        if let new {
            watches.append(Self.exitWatch({ await new.endedUnasked() }, report: report, event: .exited(.newVM)))
        }
        if let tee {
            // The tee sees the stream's end first: the source's event still
            // has to leave its main loop and cross QMP.
            watches.append {
                await tee.streamForwarded()
                if Task.isCancelled { return }
                report(tee.failedNow.map { .failed(.tee, "\($0)") } ?? .sourceCompleted)
            }
            // The stream's size, from the tee's count, without a QMP command while the guest computes.
            watches.append {
                var last: Int64 = -1
                while !Task.isCancelled && !tee.streamEnded {
                    let bytes = tee.bytesReceived
                    if bytes != last { report(.streamProgress(bytes)) }
                    last = bytes
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
        }
        if let sourceWatch {
            watches.append {
                do {
                    try await sourceWatch.end(timeout: .seconds(86_400))
                    report(.sourceCompleted)
                } catch {
                    if Task.isCancelled { return }
                    // QEMU reports a broken pipe when the tee failed first
                    // (a full disk): the tee's own error is the cause.
                    if let tee, let cause = await tee.failure(grace: .milliseconds(500)) {
                        report(.failed(.tee, "\(cause)"))
                    } else {
                        report(.failed(.migration, "\(error)"))
                    }
                }
            }
        }
        return watches
    }

    /// Carries out one action; returns the event that reports its end.
    func perform(_ action: CEVMMachine.Action) async -> CEVMMachine.Event? {
        do {
            switch action {
            case .prepare: try await prepare()
            case .startMigration: try await startMigration()
            case .forceSwitchOver(let bytes): try await forceSwitchOver(at: bytes)
            case .cutDisk: try cutDisk()
            case .resumeNew: try await resumeNew()
            case .adoptNew: await adoptNew()
            case .stopOld:
                // Old_VM's vCPUs are stopped for good: a last reading before their threads go.
                supervisor.sampler.untrack(pid: old.pid)
                _ = await old.stop(grace: .seconds(2))
                mark("oldEnded")
            case .finishMemory: try await finishMemory()
            case .finishDisk: try await finishDisk()
            case .commit: try await commit()
            case .cancelMigration, .resumeOld, .stopNew, .abortTee, .releaseDisk, .discardRecord:
                await undo(action)
                return nil
            }
        } catch let failure as PartFailure {
            return .failed(failure.part, failure.message)
        } catch {
            return .failed(Self.part(of: action), "\(error)")
        }
        return action.completion
    }


    static func part(of action: CEVMMachine.Action) -> CEVMMachine.Part {
        switch action {
        case .prepare, .resumeNew, .stopNew: return .newVM
        case .startMigration, .forceSwitchOver, .cancelMigration: return .migration
        case .cutDisk, .finishDisk, .releaseDisk: return .disk
        case .finishMemory, .abortTee: return .tee
        case .stopOld, .resumeOld: return .oldVM
        case .adoptNew, .commit, .discardRecord: return .record
        }
    }

    /// A step of an action that failed, with the part to blame.
    struct PartFailure: Error {
        var part: CEVMMachine.Part
        var message: String
    }

    func step<T>(_ part: CEVMMachine.Part, _ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch let error as PartFailure { throw error } catch {
            throw PartFailure(part: part, message: "\(error)")
        }
    }

    /// New_VM (same machine, the same disk export, waiting for the stream,
    /// on the pre-copy set: it moves to its own set just before it runs),
    /// the tee, the migration settings, and the disk cut prepared while
    /// Old_VM still runs.
    private func prepare() async throws {
        let paths = supervisor.paths
        var config = old.config
        config.qmpSocket = paths.qmpSocket(instance: index)
        config.incoming = true
        // The same NICs (ids, slots, MACs): network NICs on new ports of
        // their networks, user NICs without their host forwards, which
        // Old_VM binds until the switch-over (`moveHostForwards`).
        let nics = try await step(.newVM) {
            try await InstanceNICs.make(spec: spec, instance: index, ports: supervisor.networkPorts, standby: true)
        }
        made.withLock { $0.newPorts = nics.ports }
        defer { nics.close() }
        config.nics = nics.nics
        config.withholdHostForwards = true
        let incoming = "\(paths.runDirectory)/in\(index).sock"
        unlink(incoming)
        let instance = try await step(.newVM) {
            try await QEMUInstance.launch(
                config, binary: supervisor.options.qemuBinary,
                stderrLog: "\(paths.runDirectory)/qemu\(index).stderr", cpuset: placement.precopy,
                console: console.sink(instance: index, continuing: index - 1))
        }
        made.withLock { $0.new = instance }
        // Sampled from before it runs, so the window sees all its vCPU time.
        if let vcpus = try? await instance.vcpuThreads() {
            supervisor.sampler.track(pid: instance.pid, threads: vcpus.map { Int32($0) })
        }
        let incomingWatch = try await step(.newVM) {
            let watch = try await MigrationWatch.start(instance.qmp)
            _ = try await instance.qmp.execute("migrate-incoming", arguments: ["uri": .string("unix:\(incoming)")])
            return watch
        }
        made.withLock { $0.incomingWatch = incomingWatch }
        let sink = try await step(.tee) {
            try MigrationSink(
                socketPath: "\(paths.runDirectory)/tee.sock", recording: recording, forwardTo: incoming,
                precopy: placement.precopy, oldSide: placement.oldSide)
        }
        made.withLock { $0.tee = sink }
        let (parameters, sourceWatch) = try await step(.oldVM) {
            let parameters = try await MigrationSettings.apply(
                to: old.qmp, downtimeLimitMs: options.downtimeLimitMs ?? MigrationSettings.cevmDowntimeLimitMs)
            // Set either way: a capability stays set on a QEMU process.
            try await MigrationSettings.setCapability(old.qmp, "auto-converge", options.autoConverge)
            let watch = try await MigrationWatch.start(old.qmp)
            // The guest computes on its pre-copy set until the switch-over.
            if old.cpuset != placement.oldInstance { try old.pin(to: placement.oldInstance) }
            return (parameters, watch)
        }
        made.withLock {
            $0.parameters = parameters
            $0.sourceWatch = sourceWatch
        }
        // U, the disk record and the journal, made while Old_VM still runs.
        let prepared = try await step(.disk) {
            try await supervisor.prepareCut(diskService, directory: directory, previous: previous, full: options.full)
        }
        made.withLock { $0.prepared = prepared }
        mark("prepared")
    }

    /// `migrate` Old_VM into the tee; its migration threads go to the pre-copy set.
    private func startMigration() async throws {
        guard let sink = made.withLock({ $0.tee }), let new = made.withLock({ $0.new }) else {
            throw PartFailure(part: .tee, message: "no tee to migrate into")
        }
        let oldRunState = RunStateTimes(old.qmp)
        made.withLock { $0.oldRunState = oldRunState }
        _ = try await old.qmp.execute("migrate", arguments: ["uri": .string("unix:\(sink.socketPath)")])
        let started = Timestamp.monotonic()
        let threads = await old.pinMigrationThreads(to: placement.precopy)
        let migration = Set(threads.compactMap { try? Affinity.get(thread: $0).description }).sorted().joined(separator: " | ")
        let (oldSets, newSets) = (Supervisor.observedSets(of: old.pid), Supervisor.observedSets(of: new.pid))
        made.withLock {
            $0.migrateStarted = started
            $0.observed["migration"] = migration
            $0.observed["precopy:Old_VM"] = oldSets
            $0.observed["precopy:New_VM"] = newSets
        }
    }

    /// The stream passed its cap: QEMU's `downtime-limit` raised to its
    /// maximum, so the next round is the last.
    private func forceSwitchOver(at bytes: Int64) async throws {
        let elapsed = (Timestamp.monotonic() - made.withLock { $0.migrateStarted }) * 1000
        let remaining = try? await old.qmp.execute("query-migrate")["ram"]?["remaining"]?.int64Value
        _ = try await old.qmp.execute(
            "migrate-set-parameters", arguments: ["downtime-limit": .int(MigrationSettings.forcingDowntimeLimitMs)])
        log("the memory stream passed \(limits.streamBytes >> 20) MiB after \(Int(elapsed)) ms without converging "
            + "(\((remaining ?? -1) >> 20) MiB dirty): forcing the switch-over")
        made.withLock {
            $0.forced = .init(
                streamBytes: bytes, afterMs: elapsed, downtimeLimitMs: MigrationSettings.forcingDowntimeLimitMs,
                remainingBytes: remaining)
        }
    }

    /// The source's stream has ended and the tee passed all of it on.
    /// Old_VM stopped, and flushed its disk through the manager, before it
    /// sent its last bytes: T is the disk at the switch-over.
    private func cutDisk() throws {
        mark("sourceCompleted")
        if let diskService, let prepared = made.withLock({ $0.prepared }) {
            let cut = try diskService.vmDisk.cut(prepared)
            made.withLock { $0.cut = cut }
        }
        mark("diskCut")
    }

    /// New_VM moves to its set and runs. `cont` while New_VM still loads the
    /// stream's tail starts it the moment it has all of it (QEMU's
    /// autostart), with no QMP round trip in between; the cut came first, so
    /// none of its writes precedes the cut.
    private func resumeNew() async throws {
        let (instance, watch) = made.withLock { ($0.new, $0.incomingWatch) }
        guard let new = instance, let incomingWatch = watch else { throw PartFailure(part: .newVM, message: "no New_VM to resume") }
        try new.pin(to: placement.newInstance)
        mark("newPinned")
        let newRunState = RunStateTimes(new.qmp)
        made.withLock { $0.newRunState = newRunState }
        try await promoteNewPorts()
        try await new.resume()
        mark("contSent")
        try await incomingWatch.end()
        mark("switchOver")
        made.withLock { $0.resumedWall = Timestamp.wallSeconds() }
    }

    /// New_VM's ports become the VM's on its networks, while both
    /// instances are paused: from here the switch writes to New_VM, first
    /// the frames it wrote to Old_VM that Old_VM's QEMU never read, then
    /// those held meanwhile; what New_VM sends once it runs is switched at
    /// once (a standby port's frames would be dropped).
    private func promoteNewPorts() async throws {
        for port in made.withLock({ $0.newPorts }) {
            let again: Int
            do { again = try await supervisor.networkPorts.promote(network: port.network, vm: spec.name, port: port.id) } catch {
                throw PartFailure(part: .newVM, message: "network \(port.network): New_VM's port \(port.id) not promoted: \(error)")
            }
            log("network \(port.network): port \(port.id) promoted, \(again) frame(s) Old_VM never read delivered to it")
        }
    }

    /// New_VM is the VM's instance from here on, whatever else fails; the
    /// figures of the switch-over; the old side moves to its CPU set.
    private func adoptNew() async {
        guard let new = made.withLock({ $0.new }) else { return }
        await supervisor.state.adopt(new)
        let newPorts = made.withLock { $0.newPorts }
        if !newPorts.isEmpty { await supervisor.state.setNetworkPorts(newPorts) }
        // First, so that the forwarded ports are unbound as briefly as can be.
        if spec.nics.contains(where: { !$0.hostForwards.isEmpty }) {
            let lost = await Supervisor.moveHostForwards(spec.nics, from: old, to: new) { log($0) }
            await supervisor.update { $0.lostHostForwards = lost.isEmpty ? nil : lost }
        }
        let (sourceWatch, oldRunState, newRunState) = made.withLock { ($0.sourceWatch, $0.oldRunState, $0.newRunState) }
        // New_VM has the whole stream, so the switch-over stands even if
        // Old_VM is gone before it answers: the record then lacks QEMU's own figures.
        var info: JSONValue = .object([:])
        if let sourceWatch {
            do { info = try await sourceWatch.finalInfo() } catch {
                log("no migration figures from Old_VM after the switch-over: \(error)")
            }
        }
        // The pause as QEMU stamped it: Old_VM's vCPUs stopped, New_VM's started.
        let stopped = await oldRunState?.time(of: "STOP", within: .milliseconds(500))
        let started = await newRunState?.time(of: "RESUME", within: .seconds(2))
        let vcpus = (try? await new.vcpuThreads()) ?? []
        await supervisor.update {
            $0.qemuPID = new.pid
            $0.cpuset = placement.newInstance.description
            $0.vcpuThreads = vcpus.map { Int32($0) }
        }
        let forced = made.withLock { $0.forced }
        log("switched over to instance \(index) (pid \(new.pid)); downtime \(info["downtime"]?.intValue ?? -1) ms"
            + (forced.map { " (forced at \($0.streamBytes >> 20) MiB of stream)" } ?? ""))
        // The old side moves to its CPU set: the tee, the integration, Old_VM
        // until it ends. (The tee moves itself when the source's stream ends.)
        var observed: [String: String] = [:]
        if let tid = made.withLock({ $0.cut })?.integration.threadID {
            try? Affinity.set(thread: tid, to: placement.oldSide)
            observed["integration"] = (try? Affinity.get(thread: tid))?.description
        }
        _ = try? old.pin(to: placement.oldSide)
        observed["Old_VM"] = Supervisor.observedSets(of: old.pid)
        observed["New_VM"] = Supervisor.observedSets(of: new.pid)
        made.withLock {
            $0.info = info
            $0.stopped = stopped
            $0.started = started
            $0.observed.merge(observed) { $1 }
        }
    }

    private func finishMemory() async throws {
        guard let tee = made.withLock({ $0.tee }) else { throw PartFailure(part: .tee, message: "no tee") }
        let memory = try await tee.finish()
        mark("memoryDurable")
        made.withLock {
            $0.memory = memory
            $0.observed["tee"] = tee.oldSideAffinity.withLock { $0 }?.description
        }
    }

    private func finishDisk() async throws {
        let cut = made.withLock { $0.cut }
        let disk = try await supervisor.finishDiskRecord(
            cut, service: diskService, previous: previous, spec: spec, id: id, directory: directory)
        mark("diskDurable")
        made.withLock { $0.disk = disk }
    }

    /// The manifest, written atomically once memory and disk are durable.
    private func commit() async throws {
        let durable = Timestamp.monotonic()
        let state = made.withLock { $0 }
        guard let memory = state.memory else { throw PartFailure(part: .record, message: "no memory record to commit") }
        let phases = state.phases
        // The window's settle wait is not the record's latency: `durable` is taken before it.
        let cost = await supervisor.sampler.closeWindow(resumed: phases["switchOver"].map { requested + $0 / 1000 })
        let info = state.info
        let downtime = info["downtime"]?.doubleValue
        let pausedWall = state.stopped ?? state.resumedWall - (downtime ?? 0) / 1000
        let resumedQEMU = state.started ?? state.resumedWall
        let pausedAt = Timestamp.format(wallSeconds: pausedWall)
        // Without QEMU's STOP and RESUME stamps: its downtime plus the supervisor's view of the rest.
        let pauseMs = state.stopped != nil && state.started != nil ? (resumedQEMU - pausedWall) * 1000
            : downtime.map { $0 + ((phases["switchOver"] ?? 0) - (phases["sourceCompleted"] ?? 0)) } ?? 0
        // To the pause's start on the same clock as `pausedAt`.
        let toPause = state.stopped.map { max(0, ($0 - requestedWall) * 1000) } ?? phases["sourceCompleted"] ?? 0
        var timings = RecordManifest.Timings(
            requestToPauseMs: toPause, guestPauseMs: pauseMs, requestToDurableMs: 0, pausedAt: pausedAt,
            resumedAt: Timestamp.format(wallSeconds: resumedQEMU))
        timings.overlapMs = (durable - requested) * 1000 - (phases["switchOver"] ?? 0)
        timings.phases = phases
        timings.consoleGapMs = await console.interruption(paused: pausedWall, resumed: resumedQEMU).map { $0 * 1000 }
        var migration = RecordManifest.MigrationInfo(
            parameters: state.parameters, capabilities: ["auto-converge": options.autoConverge],
            totalTimeMs: info["total-time"]?.doubleValue, downtimeMs: downtime, streamBytes: memory.streamBytes)
        migration.maxStreamBytes = limits.streamBytes
        migration.onMaxStream = (options.onMaxStream ?? .switchOver).rawValue
        migration.forcedSwitchOver = state.forced
        let disk = state.disk
        var manifest = RecordManifest(
            id: id, vm: supervisor.name, createdAt: pausedAt, mechanism: .cevm, parent: disk?.parent ?? spec.disk?.record,
            spec: spec, qemu: .init(version: old.qmp.greeting.versionString, package: old.qmp.greeting.package),
            migration: migration, timings: timings, files: memory.files + (disk?.files ?? []), disk: disk?.disk)
        manifest.memory = memory.memory
        manifest.placement = .init(
            policy: placement.policy.rawValue, newInstance: placement.newInstance.description, oldSide: placement.oldSide.description)
        manifest.placement?.precopy = placement.precopy.description
        manifest.placement?.oldInstance = placement.oldInstance.description
        manifest.placement?.observed = state.observed
        manifest.timings.cost = cost
        manifest.timings.requestToDurableMs = (durable - requested) * 1000
        let record = try await supervisor.commitRecord(manifest, in: directory, spec: spec, cut: state.cut)
        made.withLock { $0.record = record }
    }

    /// Undoes one thing after a failure; never throws (best effort, each
    /// part bounded in time).
    func undo(_ action: CEVMMachine.Action) async {
        let state = made.withLock { (new: $0.new, tee: $0.tee, prepared: $0.prepared, cut: $0.cut) }
        switch action {
        case .cancelMigration:
            _ = try? await old.qmp.execute("migrate_cancel")
        case .resumeOld:
            if let runState = try? await old.runState(), runState != "running" { try? await old.resume() }
            // Old_VM runs on: no throttling capability left set (it would
            // also refuse a later background snapshot).
            if options.autoConverge { try? await MigrationSettings.setCapability(old.qmp, "auto-converge", false) }
        case .stopNew:
            if let new = state.new {
                supervisor.sampler.untrack(pid: new.pid)
                _ = await new.stop(grace: .seconds(1))
            }
            await supervisor.detach(made.withLock { $0.newPorts })
        case .stopOld:
            supervisor.sampler.untrack(pid: old.pid)
            _ = await old.stop(grace: .seconds(2))
        case .abortTee:
            if let tee = state.tee {
                tee.abort()
                _ = await tee.failure(grace: .seconds(2))
            }
        case .releaseDisk:
            await supervisor.releaseDisk(diskService, prepared: state.prepared, cut: state.cut)
        case .discardRecord:
            RecordStore.discard(directory)
        default:
            break
        }
    }
}
