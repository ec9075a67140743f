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

/// The CEVM mechanism (DESIGN.md "The checkpoint, step by step"): the VM
/// moves to a new pinned instance through a stream tee that also spools the
/// record's memory; the guest computes there while the old side serialises.
extension Supervisor {
    func cevmCheckpoint(_ old: QEMUInstance, _ options: CheckpointOptions) async throws -> Record {
        let requested = Timestamp.monotonic()
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
            let instance = try await QEMUInstance.launch(
                config, binary: self.options.qemuBinary,
                stderrLog: "\(paths.runDirectory)/qemu\(index).stderr", cpuset: placement.newInstance,
                console: console.sink(instance: index))
            new = instance
            _ = try await instance.qmp.execute("migrate-incoming", arguments: ["uri": .string("unix:\(incoming)")])
            let sink = try MigrationSink(
                socketPath: "\(paths.runDirectory)/tee.sock", spoolPath: "\(directory)/memory.mig", forwardTo: incoming,
                oldSide: placement.oldSide)
            tee = sink
            let parameters = try await MigrationSettings.apply(to: old.qmp, downtimeLimitMs: options.downtimeLimitMs)
            // U, the disk record and the journal, made while Old_VM still runs.
            prepared = try diskService?.vmDisk.prepareCut(
                recordPath: "\(directory)/\(Self.diskRecordName)", previousRecord: previous?.disk, full: options.full)
            mark("prepared")
            inject(.prepared)

            // 3. Migrate Old_VM → tee → New_VM.
            _ = try await old.qmp.execute("migrate", arguments: ["uri": .string("unix:\(sink.socketPath)")])
            inject(.migrating)
            let info: JSONValue
            do { info = try await MigrationSettings.waitForCompletion(old.qmp) } catch {
                throw await sink.failure() ?? error
            }
            // Old_VM stopped and flushed its disk at the end of the migration:
            // T is the disk at the switch-over.
            let pausedAt = Timestamp.now()
            let pausedWall = Timestamp.wallSeconds()
            mark("sourceCompleted")
            _ = try await MigrationSettings.waitForCompletion(instance.qmp)
            mark("destinationCompleted")

            // 4. Switch over: cut the disk, let New_VM run.
            if let diskService, let ready = prepared {
                cut = try diskService.vmDisk.cut(ready)
            }
            try await instance.resume()
            switchedOver = true
            let resumedAt = Timestamp.now()
            let resumedWall = Timestamp.wallSeconds()
            mark("switchOver")
            inject(.switchedOver)
            let vcpus = (try? await instance.vcpuThreads()) ?? []
            inner.withLock { $0.instance = instance }
            update {
                $0.qemuPID = instance.pid
                $0.cpuset = placement.newInstance.description
                $0.vcpuThreads = vcpus.map { Int32($0) }
            }
            log("checkpoint \(id): switched over to instance \(index) (pid \(instance.pid)); downtime \(info["downtime"]?.intValue ?? -1) ms")

            // The old side moves to its CPU set: the tee, the integration, Old_VM until it ends.
            var observed: [String: String] = [:]
            // (The tee moves itself when the source's stream ends.)
            if let tid = cut?.integration.threadID {
                try? Affinity.set(thread: tid, to: placement.oldSide)
                observed["integration"] = (try? Affinity.get(thread: tid))?.description
            }
            _ = try? old.pin(to: placement.oldSide)
            observed["Old_VM"] = Set(((try? Affinity.allowedLists(of: old.pid)) ?? [:]).values).sorted().joined(separator: " | ")
            observed["New_VM"] = Set(((try? Affinity.allowedLists(of: instance.pid)) ?? [:]).values).sorted().joined(separator: " | ")
            // 5. Old_VM is needed no more (the tee has every byte).
            console.finish(instance: index - 1)
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
            var timings = RecordManifest.Timings(
                requestToPauseMs: phases["sourceCompleted"] ?? 0,
                guestPauseMs: downtime.map { $0 + ((phases["switchOver"] ?? 0) - (phases["sourceCompleted"] ?? 0)) } ?? 0,
                requestToDurableMs: 0, pausedAt: pausedAt, resumedAt: resumedAt)
            timings.overlapMs = (durable - requested) * 1000 - (phases["switchOver"] ?? 0)
            timings.phases = phases
            timings.consoleGapMs = await console.longestGap(
                from: pausedWall - (downtime ?? 0) / 1000, to: resumedWall, waiting: .seconds(2)).map { $0 * 1000 }
            var manifest = RecordManifest(
                id: id, vm: name, createdAt: pausedAt, mechanism: .cevm, parent: parent, spec: spec,
                qemu: .init(version: old.qmp.greeting.versionString, package: old.qmp.greeting.package),
                migration: .init(
                    parameters: parameters, capabilities: [:], totalTimeMs: info["total-time"]?.doubleValue,
                    downtimeMs: downtime, streamBytes: memory.size),
                timings: timings, files: files, disk: diskRecord)
            manifest.placement = .init(
                policy: placement.policy.rawValue, newInstance: placement.newInstance.description,
                oldSide: placement.oldSide.description)
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
                if let new { _ = await new.stop(grace: .seconds(1)) }
            }
            if let tee { _ = await tee.failure(grace: .milliseconds(100)) }
            await cleanUpFailedCheckpoint(diskService, prepared: prepared, cut: cut, directory: directory)
            if let error = error as? SupervisorError { throw error }
            throw SupervisorError.checkpointFailed("\(error)")
        }
    }
}
