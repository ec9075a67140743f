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

/// QEMU's background snapshot (userfaultfd write protection, seeds 000/003):
/// the guest runs while its RAM is written, pages it writes are copied
/// first. It saves RAM and devices only, so the disk is cut at the same
/// instant: cevm stops the guest, cuts the disk, starts the snapshot (whose
/// setup saves the device state of the stopped guest and arms write
/// protection) and lets the guest run again once the setup is done.
extension Supervisor {
    func backgroundSnapshot(_ instance: QEMUInstance, full: Bool) async throws -> Record {
        let requested = Timestamp.monotonic()
        var phases: [String: Double] = [:]
        func mark(_ phase: String) { phases[phase] = (Timestamp.monotonic() - requested) * 1000 }
        let spec = try paths.readSpec()
        let store = RecordStore(paths: paths)
        let id = RecordStore.newID()
        let directory = try store.newRecordDirectory(id: id)
        let qmp = instance.qmp
        let (diskService, previous, console) = inner.withLock { ($0.disk, $0.lastRecord, $0.console) }
        var paused = false
        var capabilitySet = false
        var prepared: VMDisk.PreparedCut?
        var cut: VMDisk.Cut?
        do {
            let sink = try MigrationSink(socketPath: "\(paths.runDirectory)/sink.sock", spoolPath: "\(directory)/memory.mig")
            let parameters = try await MigrationSettings.apply(to: qmp)
            try await Self.setBackgroundSnapshot(qmp, true)
            capabilitySet = true
            let watch = try await MigrationWatch.start(qmp)
            prepared = try diskService?.vmDisk.prepareCut(
                recordPath: "\(directory)/\(Self.diskRecordName)", previousRecord: previous?.disk, full: full)
            mark("prepared")
            _ = try await qmp.execute("stop")
            paused = true
            let pausedAt = Timestamp.now()
            let pausedWall = Timestamp.wallSeconds()
            let pauseStart = Timestamp.monotonic()
            if let diskService, let ready = prepared { cut = try diskService.vmDisk.cut(ready) }
            _ = try await qmp.execute("migrate", arguments: ["uri": .string("unix:\(sink.socketPath)")])
            // The setup (device state, write protection) is done once RAM
            // pages flow; QEMU may also restart the guest itself.
            let deadline = ContinuousClock.now + .seconds(30)
            while true {
                let info = try await qmp.execute("query-migrate")
                let status = info["status"]?.stringValue ?? ""
                if status == "failed" || status == "cancelled" {
                    throw SupervisorError.checkpointFailed("background snapshot \(status): \(info["error-desc"]?.stringValue ?? "no reason given")")
                }
                if status == "completed" || (info["ram"]?["transferred"]?.intValue ?? 0) > 0 { break }
                if ContinuousClock.now > deadline { throw SupervisorError.checkpointFailed("background snapshot did not start within 30 s") }
                try await Task.sleep(for: .milliseconds(1))
            }
            if try await instance.runState() != "running" { _ = try await qmp.execute("cont") }
            paused = false
            let resumedAt = Timestamp.now()
            let resumedWall = Timestamp.wallSeconds()
            let pauseEnd = Timestamp.monotonic()
            mark("resumed")
            let info: JSONValue
            do { info = try await watch.completion() } catch {
                _ = try? await qmp.execute("migrate_cancel")
                throw await sink.failure() ?? error
            }
            mark("snapshotCompleted")
            // Later migrations (a CEVM checkpoint) must be ordinary ones.
            try await Self.setBackgroundSnapshot(qmp, false)
            capabilitySet = false
            let memory = try await sink.finish()
            mark("memoryDurable")
            var files = [memory]
            let (diskFiles, diskRecord, parent) = try await finishDiskRecord(
                cut, service: diskService, previous: previous, spec: spec, id: id, directory: directory)
            files += diskFiles
            mark("diskDurable")
            var timings = RecordManifest.Timings(
                requestToPauseMs: (pauseStart - requested) * 1000, guestPauseMs: (pauseEnd - pauseStart) * 1000,
                requestToDurableMs: 0, pausedAt: pausedAt, resumedAt: resumedAt)
            timings.overlapMs = (Timestamp.monotonic() - pauseEnd) * 1000
            timings.phases = phases
            timings.consoleGapMs = await console?.longestGap(from: pausedWall, to: resumedWall, waiting: .seconds(2)).map { $0 * 1000 }
            var manifest = RecordManifest(
                id: id, vm: name, createdAt: pausedAt, mechanism: .backgroundSnapshot, parent: parent, spec: spec,
                qemu: .init(version: qmp.greeting.versionString, package: qmp.greeting.package),
                migration: .init(
                    parameters: parameters, capabilities: ["background-snapshot": true],
                    totalTimeMs: info["total-time"]?.doubleValue, downtimeMs: info["downtime"]?.doubleValue,
                    streamBytes: memory.size),
                timings: timings, files: files, disk: diskRecord)
            manifest.timings.requestToDurableMs = (Timestamp.monotonic() - requested) * 1000
            let record = try RecordStore.commit(manifest, in: directory)
            if let cut { inner.withLock { $0.lastRecord = (id, cut.recordPath ?? "") } }
            return record
        } catch {
            log("checkpoint \(id) (background-snapshot) failed: \(error)")
            _ = try? await qmp.execute("migrate_cancel")
            if paused { _ = try? await qmp.execute("cont") }
            if capabilitySet {
                for _ in 0..<200 {
                    let status = (try? await qmp.execute("query-migrate"))?["status"]?.stringValue ?? ""
                    if status != "active" && status != "setup" && status != "cancelling" { break }
                    try? await Task.sleep(for: .milliseconds(10))
                }
                try? await Self.setBackgroundSnapshot(qmp, false)
            }
            await cleanUpFailedCheckpoint(diskService, prepared: prepared, cut: cut, directory: directory)
            if let error = error as? SupervisorError { throw error }
            throw SupervisorError.checkpointFailed("\(error)")
        }
    }

    static func setBackgroundSnapshot(_ qmp: QMPClient, _ on: Bool) async throws {
        let capability: JSONValue = .object(["capability": .string("background-snapshot"), "state": .bool(on)])
        let arguments: [String: JSONValue]? = ["capabilities": .array([capability])]
        _ = try await qmp.execute("migrate-set-capabilities", arguments: arguments)
    }
}
