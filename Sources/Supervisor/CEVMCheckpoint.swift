#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
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
extension Supervisor {
    func cevmCheckpoint(_ old: QEMUInstance, _ options: CheckpointOptions) async throws -> Record {
        let requested = Timestamp.monotonic()
        let requestedWall = Timestamp.wallSeconds()
        var phases: [String: Double] = [:]
        func mark(_ phase: String) { phases[phase] = (Timestamp.monotonic() - requested) * 1000 }
        let spec = try paths.readSpec()
        let store = RecordStore(paths: paths)
        let id = RecordStore.newID()
        let directory = try store.newRecordDirectory(id: id)
        let (diskService, previous, console, index) = inner.withLock { inner in
            defer { inner.nextInstance += 1 }
            return (inner.disk, inner.lastRecord, inner.console, inner.nextInstance)
        }
        guard let console else { throw SupervisorError.checkpointFailed("the VM has no console log") }

        // 1. Place.
        let placement: Placement
        do {
            placement = try Placement.choose(
                policy: options.policy ?? .shared, cpus: options.cpus, checkpointCPUs: options.checkpointCPUs,
                vmCPUs: spec.cpuset, current: old.cpuset, available: try Affinity.available())
        } catch let error as Placement.PlacementError {
            RecordStore.discard(directory)
            throw SupervisorError.checkpointFailed("\(error)")
        }
        log("checkpoint \(id): cevm, policy \(placement.policy.rawValue): New_VM on \(placement.newInstance), old side on \(placement.oldSide)")

        var new: QEMUInstance?
        var tee: MigrationSink?
        var prepared: VMDisk.PreparedCut?
        var cut: VMDisk.Cut?
        var switchedOver = false
        let streamLimit = options.maxStreamBytes ?? CheckpointOptions.defaultMaxStreamBytes(memoryMiB: spec.memoryMiB)
        let limitAction = options.onMaxStream ?? .switchOver
        let fault = FaultInjection.fromEnvironment
        func inject(_ step: FaultInjection.Step) {
            fault?.trigger(at: step, old: old.pid, new: new?.pid) { log($0) }
        }
        do {
            // 2. Prepare New_VM: same machine, the same disk export, pinned, waiting for the stream.
            var config = old.config
            config.qmpSocket = paths.qmpSocket(instance: index)
            config.incoming = true
            let incoming = "\(paths.runDirectory)/in\(index).sock"
            unlink(incoming)
            // While it receives, New_VM works on the pre-copy set (away from
            // the guest, which still computes on Old_VM); it moves to its own
            // set just before it runs.
            let instance = try await QEMUInstance.launch(
                config, binary: self.options.qemuBinary,
                stderrLog: "\(paths.runDirectory)/qemu\(index).stderr", cpuset: placement.precopy,
                console: console.sink(instance: index, continuing: index - 1))
            new = instance
            let incomingWatch = try await MigrationWatch.start(instance.qmp)
            _ = try await instance.qmp.execute("migrate-incoming", arguments: ["uri": .string("unix:\(incoming)")])
            let sink = try MigrationSink(
                socketPath: "\(paths.runDirectory)/tee.sock", spoolPath: "\(directory)/memory.mig", forwardTo: incoming,
                precopy: placement.precopy, oldSide: placement.oldSide)
            tee = sink
            let parameters = try await MigrationSettings.apply(to: old.qmp, downtimeLimitMs: options.downtimeLimitMs)
            // Set either way: a capability stays set on a QEMU process.
            try await MigrationSettings.setCapability(old.qmp, "auto-converge", options.autoConverge)
            let sourceWatch = try await MigrationWatch.start(old.qmp)
            // The guest computes on its pre-copy set until the switch-over.
            if old.cpuset != placement.oldInstance { try old.pin(to: placement.oldInstance) }
            // U, the disk record and the journal, made while Old_VM still runs.
            prepared = try diskService?.vmDisk.prepareCut(
                recordPath: "\(directory)/\(Self.diskRecordName)", previousRecord: previous?.disk, full: options.full)
            mark("prepared")
            inject(.prepared)

            // 3. Migrate Old_VM → tee → New_VM.
            let oldRunState = RunStateTimes(old.qmp)
            _ = try await old.qmp.execute("migrate", arguments: ["uri": .string("unix:\(sink.socketPath)")])
            let migrateStarted = Timestamp.monotonic()
            var observed: [String: String] = [:]
            let migrationThreads = await old.pinMigrationThreads(to: placement.precopy)
            observed["migration"] = Set(migrationThreads.compactMap { try? Affinity.get(thread: $0).description }).sorted()
                .joined(separator: " | ")
            observed["precopy:Old_VM"] = Self.observedSets(of: old.pid)
            observed["precopy:New_VM"] = Self.observedSets(of: instance.pid)
            inject(.migrating)
            let forced: RecordManifest.MigrationInfo.ForcedSwitchOver?
            do {
                forced = try await watchPrecopy(
                    sourceWatch, tee: sink, limit: streamLimit, action: limitAction, memoryMiB: spec.memoryMiB,
                    started: migrateStarted)
            } catch let error as StreamLimitReached {
                throw SupervisorError.checkpointFailed(error.description)
            } catch {
                throw await sink.failure() ?? error
            }
            // The source's stream has ended and the tee passed all of it on.
            // Old_VM stopped, and flushed its disk through the manager,
            // before it sent its last bytes: T is the disk at the switch-over.
            mark("sourceCompleted")

            // 4. Switch over: cut the disk, move New_VM to its set, let it
            // run. `cont` while New_VM still loads the stream's tail starts it
            // the moment it has all of it (QEMU's autostart), with no QMP round
            // trip in between; the cut comes first, so none of its writes
            // precedes the cut.
            if let diskService, let ready = prepared {
                cut = try diskService.vmDisk.cut(ready)
            }
            mark("diskCut")
            try instance.pin(to: placement.newInstance)
            mark("newPinned")
            let newRunState = RunStateTimes(instance.qmp)
            try await instance.resume()
            mark("contSent")
            try await incomingWatch.end()
            switchedOver = true
            // New_VM is the VM's instance from here on, whatever else fails.
            inner.withLock { $0.instance = instance }
            mark("switchOver")
            let resumedWall = Timestamp.wallSeconds()
            inject(.switchedOver)
            // The figures, asked for once the guest runs again. New_VM has the
            // whole stream, so the switch-over stands even if Old_VM is gone
            // before it answers: the record then lacks QEMU's own figures.
            let info: JSONValue
            do { info = try await sourceWatch.finalInfo() } catch {
                log("checkpoint \(id): no migration figures from Old_VM after the switch-over: \(error)")
                info = .object([:])
            }
            // The pause as QEMU stamped it: Old_VM's vCPUs stopped, New_VM's started.
            let stopped = await oldRunState.time(of: "STOP", within: .milliseconds(500))
            let started = await newRunState.time(of: "RESUME", within: .seconds(2))
            let pausedWall = stopped ?? resumedWall - (info["downtime"]?.doubleValue ?? 0) / 1000
            let resumedQEMU = started ?? resumedWall
            let pausedAt = Timestamp.format(wallSeconds: pausedWall)
            let resumedAt = Timestamp.format(wallSeconds: resumedQEMU)
            let vcpus = (try? await instance.vcpuThreads()) ?? []
            update {
                $0.qemuPID = instance.pid
                $0.cpuset = placement.newInstance.description
                $0.vcpuThreads = vcpus.map { Int32($0) }
            }
            log("checkpoint \(id): switched over to instance \(index) (pid \(instance.pid)); downtime \(info["downtime"]?.intValue ?? -1) ms"
                + (forced.map { " (forced at \($0.streamBytes >> 20) MiB of stream)" } ?? ""))

            // The old side moves to its CPU set: the tee, the integration, Old_VM until it ends.
            // (The tee moves itself when the source's stream ends.)
            if let tid = cut?.integration.threadID {
                try? Affinity.set(thread: tid, to: placement.oldSide)
                observed["integration"] = (try? Affinity.get(thread: tid))?.description
            }
            _ = try? old.pin(to: placement.oldSide)
            observed["Old_VM"] = Self.observedSets(of: old.pid)
            observed["New_VM"] = Self.observedSets(of: instance.pid)
            // 5. Old_VM is needed no more (the tee has every byte). Its
            // unfinished console line, if any, New_VM finishes.
            _ = await old.stop(grace: .seconds(2))
            mark("oldEnded")
            let memory = try await sink.finish()
            mark("memoryDurable")
            inject(.memoryDurable)
            observed["tee"] = sink.oldSideAffinity.withLock { $0 }?.description
            var files = [memory]
            let (diskFiles, diskRecord, parent) = try await finishDiskRecord(
                cut, service: diskService, previous: previous, spec: spec, id: id, directory: directory)
            files += diskFiles
            mark("diskDurable")
            let durable = Timestamp.monotonic()
            let downtime = info["downtime"]?.doubleValue
            // Without QEMU's STOP and RESUME stamps: its downtime plus the
            // supervisor's view of the rest.
            let pauseMs = stopped != nil && started != nil ? (resumedQEMU - pausedWall) * 1000
                : downtime.map { $0 + ((phases["switchOver"] ?? 0) - (phases["sourceCompleted"] ?? 0)) } ?? 0
            // To the pause's start on the same clock as `pausedAt`.
            let toPause = stopped.map { max(0, ($0 - requestedWall) * 1000) } ?? phases["sourceCompleted"] ?? 0
            var timings = RecordManifest.Timings(
                requestToPauseMs: toPause, guestPauseMs: pauseMs,
                requestToDurableMs: 0, pausedAt: pausedAt, resumedAt: resumedAt)
            timings.overlapMs = (durable - requested) * 1000 - (phases["switchOver"] ?? 0)
            timings.phases = phases
            timings.consoleGapMs = await console.longestGap(
                from: pausedWall, to: max(resumedQEMU, pausedWall), waiting: .seconds(2)).map { $0 * 1000 }
            var migration = RecordManifest.MigrationInfo(
                parameters: parameters, capabilities: ["auto-converge": options.autoConverge],
                totalTimeMs: info["total-time"]?.doubleValue, downtimeMs: downtime, streamBytes: memory.size)
            migration.maxStreamBytes = streamLimit
            migration.onMaxStream = limitAction.rawValue
            migration.forcedSwitchOver = forced
            var manifest = RecordManifest(
                id: id, vm: name, createdAt: pausedAt, mechanism: .cevm, parent: parent, spec: spec,
                qemu: .init(version: old.qmp.greeting.versionString, package: old.qmp.greeting.package),
                migration: migration, timings: timings, files: files, disk: diskRecord)
            manifest.placement = .init(
                policy: placement.policy.rawValue, newInstance: placement.newInstance.description,
                oldSide: placement.oldSide.description)
            manifest.placement?.precopy = placement.precopy.description
            manifest.placement?.oldInstance = placement.oldInstance.description
            manifest.placement?.observed = observed
            manifest.timings.requestToDurableMs = (Timestamp.monotonic() - requested) * 1000
            let record = try RecordStore.commit(manifest, in: directory)
            if let cut { inner.withLock { $0.lastRecord = (id, cut.recordPath ?? "") } }
            return record
        } catch {
            log("checkpoint \(id) failed\(switchedOver ? " after the switch-over" : ""): \(error)")
            if !switchedOver {
                // Before the switch-over the VM is still Old_VM: cancel, resume it, drop New_VM.
                _ = try? await old.qmp.execute("migrate_cancel")
                if let state = try? await old.runState(), state != "running" { _ = try? await old.qmp.execute("cont") }
                // Old_VM runs on: no throttling capability left set (it would
                // also refuse a later background snapshot).
                if options.autoConverge { try? await MigrationSettings.setCapability(old.qmp, "auto-converge", false) }
                if let new { _ = await new.stop(grace: .seconds(1)) }
            }
            if let tee { _ = await tee.failure(grace: .milliseconds(100)) }
            await cleanUpFailedCheckpoint(diskService, prepared: prepared, cut: cut, directory: directory)
            if let error = error as? SupervisorError { throw error }
            throw SupervisorError.checkpointFailed("\(error)")
        }
    }

    /// The distinct CPU lists the kernel reports for the threads of `pid`
    /// (Cpus_allowed_list), as the manifest's `observed` keeps them: "0",
    /// or "0 | 1" when its threads sit on different sets.
    static func observedSets(of pid: pid_t) -> String {
        Set(((try? Affinity.allowedLists(of: pid)) ?? [:]).values).sorted().joined(separator: " | ")
    }

    /// Waits for the source's migration to complete (its `MIGRATION`
    /// events, or the tee passing on the stream's end, whichever comes
    /// first), watching the stream's size meanwhile from the tee's count,
    /// without a QMP command while the guest computes. DESIGN.md step 3 has
    /// no bound of its own: a guest that dirties memory faster than it is
    /// streamed never converges, and the tee would spool every round. Past
    /// `limit` bytes it either forces the switch-over (QEMU's
    /// `downtime-limit` raised to its maximum, so the next round is the
    /// last) or throws `StreamLimitReached`. A forced migration that still
    /// has not completed once the stream passed `limit` + RAM + 512 MiB is
    /// given up as well. The caller cancels the migration when this throws.
    func watchPrecopy(
        _ watch: MigrationWatch, tee: MigrationSink, limit: Int64, action: StreamLimitAction, memoryMiB: Int, started: Double,
        timeout: Duration = .seconds(600)
    ) async throws -> RecordManifest.MigrationInfo.ForcedSwitchOver? {
        let qmp = watch.qmp
        let (backstop, overflow) = limit.addingReportingOverflow((Int64(memoryMiB) + 512) << 20)
        let giveUpAt = overflow ? Int64.max : backstop
        enum Outcome: Sendable {
            case completed
            case forced(RecordManifest.MigrationInfo.ForcedSwitchOver)
        }
        /// Returns once the stream passed `bytes` (checked every 20 ms).
        @Sendable func streamPasses(_ bytes: Int64) async throws -> (streamBytes: Int64, elapsedMs: Double, remaining: Int64?) {
            while tee.bytesReceived <= bytes { try await Task.sleep(for: .milliseconds(20)) }
            let remaining = try? await qmp.execute("query-migrate")["ram"]?["remaining"]?.int64Value
            return (tee.bytesReceived, (Timestamp.monotonic() - started) * 1000, remaining)
        }
        return try await withThrowingTaskGroup(of: Outcome.self) { group in
            group.addTask {
                try await watch.end(timeout: timeout)
                return .completed
            }
            // The tee sees the end first: the source's event still has to
            // leave its main loop and cross QMP.
            group.addTask {
                await tee.streamForwarded()
                if let failure = tee.failedNow { throw failure }
                return .completed
            }
            group.addTask { [self] in
                let (bytes, elapsed, remaining) = try await streamPasses(limit)
                switch action {
                case .cancel:
                    throw StreamLimitReached(limit: limit, streamBytes: bytes, elapsedMs: elapsed, remainingBytes: remaining, forced: false)
                case .switchOver:
                    _ = try await qmp.execute(
                        "migrate-set-parameters", arguments: ["downtime-limit": .int(MigrationSettings.forcingDowntimeLimitMs)])
                    log("checkpoint: the memory stream passed \(limit >> 20) MiB after \(Int(elapsed)) ms without converging "
                        + "(\((remaining ?? -1) >> 20) MiB dirty): forcing the switch-over")
                    return .forced(.init(
                        streamBytes: bytes, afterMs: elapsed, downtimeLimitMs: MigrationSettings.forcingDowntimeLimitMs,
                        remainingBytes: remaining))
                }
            }
            defer { group.cancelAll() }
            var forced: RecordManifest.MigrationInfo.ForcedSwitchOver?
            while let outcome = try await group.next() {
                switch outcome {
                case .completed:
                    return forced
                case .forced(let switchOver):
                    forced = switchOver
                    group.addTask {
                        let (bytes, elapsed, remaining) = try await streamPasses(giveUpAt)
                        throw StreamLimitReached(
                            limit: giveUpAt, streamBytes: bytes, elapsedMs: elapsed, remainingBytes: remaining, forced: true)
                    }
                }
            }
            throw SupervisorError.checkpointFailed("the migration watch ended without an answer")
        }
    }
}

/// A CEVM checkpoint's pre-copy did not converge within its stream cap.
struct StreamLimitReached: Error, CustomStringConvertible {
    var limit: Int64
    var streamBytes: Int64
    var elapsedMs: Double
    var remainingBytes: Int64?
    /// The switch-over had been forced and still did not come.
    var forced: Bool

    var description: String {
        let mib = { (bytes: Int64) in "\(bytes >> 20) MiB" }
        let dirty = remainingBytes.flatMap { $0 > 0 ? ", \(mib($0)) still to send" : nil } ?? ""
        if forced {
            return "the migration did not complete after its switch-over was forced: the memory stream reached "
                + "\(mib(streamBytes)) after \(Int(elapsedMs)) ms\(dirty); cancelled, the VM runs on"
        }
        return "the migration did not converge: the memory stream passed --max-stream \(mib(limit)) after "
            + "\(Int(elapsedMs)) ms\(dirty) (the guest dirties memory faster than it can be sent); cancelled, the VM "
            + "runs on. Allow more with --max-stream, force the switch-over with --on-max-stream switch-over, "
            + "or throttle the guest with --auto-converge"
    }
}
