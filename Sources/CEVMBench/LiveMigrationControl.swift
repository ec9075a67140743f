#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QEMU
import QMP
import Supervisor
import Synchronization

/// The peer of `cevm bench checkpoint`'s CEVM rows: QEMU's own live
/// migration of the same guest, QEMU to QEMU over a Unix socket with no cevm
/// in between (no tee, no record, no disk manager, no supervisor), placed as
/// the dedicated policy places a CEVM checkpoint (the guest on the VM's set;
/// the source's migration thread and the destination, while it receives, on
/// the other) and switched over the same way (the destination moved to the
/// guest's set and given `cont` when the source's stream has ended). What
/// the guest loses here, a pre-copy costs by itself on this machine.
extension CheckpointBenchRunner {
    static let liveMigrationLabel = "live migration (QEMU alone)"

    /// One guest under QEMU alone, then `repeats` migrations of it, each to
    /// a new destination that then carries on as the guest.
    func measureLiveMigrations(mib: Int) async throws -> [CheckpointBenchReport.Row] {
        try checkStop()
        let directory = "\(home)/live\(mib)"
        try Files.makeDirectory(directory, mode: 0o700)
        let consolePath = "\(directory)/console.log"
        let console = try ConsoleLog(path: consolePath)
        let placement = try Placement.choose(
            policy: .dedicated, cpus: nil, checkpointCPUs: nil, vmCPUs: nil, current: nil, available: try Affinity.available())
        let padding = QEMUCommandLine.ramPaddingKiB(for: try? await QEMUVersion.of())
        func config(_ index: Int, incoming: Bool) -> InstanceConfig {
            InstanceConfig(
                name: "live\(mib)", memoryMiB: mib, vcpus: 1, accel: .tcg,
                boot: .kernel(kernel: kernel, initrd: initrd, append: defaultAppend + " " + append(forRAM: mib)), drive: nil,
                qmpSocket: "\(directory)/qmp\(index).sock", incoming: incoming, cpuModel: QEMUCommandLine.tcgCPUModel,
                ramPaddingKiB: padding)
        }
        BenchOutput.progress("\(mib) MiB: \(Self.liveMigrationLabel): booting…")
        var guest = try await QEMUInstance.launch(
            config(0, incoming: false), stderrLog: "\(directory)/qemu0.stderr", cpuset: placement.newInstance,
            console: console.sink(instance: 0))
        bare.withLock { $0.append(guest) }
        // On an error, `cleanUp` stops what `bare` holds.
        try await waitForSteadyProgress(consolePath, mib: mib)
        var rows: [CheckpointBenchReport.Row] = []
        for repetition in 1...repeats {
            try checkStop()
            BenchOutput.progress("\(mib) MiB: \(Self.liveMigrationLabel): settling…")
            try await pause(Self.settle)
            let baselineStart = Timestamp.wallSeconds()
            try await pause(baseline)
            BenchOutput.progress("\(mib) MiB: \(Self.liveMigrationLabel): migrating…")
            let destination = try await QEMUInstance.launch(
                config(repetition, incoming: true), stderrLog: "\(directory)/qemu\(repetition).stderr", cpuset: placement.precopy,
                console: console.sink(instance: repetition))
            bare.withLock { $0.append(destination) }
            let socket = "\(directory)/in\(repetition).sock"
            let incoming = try await MigrationWatch.start(destination.qmp)
            _ = try await destination.qmp.execute("migrate-incoming", arguments: ["uri": .string("unix:\(socket)")])
            _ = try await MigrationSettings.apply(to: guest.qmp, downtimeLimitMs: downtimeLimit.map(Int64.init))
            let outgoing = try await MigrationWatch.start(guest.qmp)
            let stops = RunStateTimes(guest.qmp)
            let starts = RunStateTimes(destination.qmp)
            let requested = Timestamp.wallSeconds()
            _ = try await guest.qmp.execute("migrate", arguments: ["uri": .string("unix:\(socket)")])
            _ = await guest.pinMigrationThreads(to: placement.precopy)
            try await outgoing.end()
            try destination.pin(to: placement.newInstance)
            try await destination.resume()
            try await incoming.end()
            let info = try await outgoing.info()
            let stopped = await stops.time(of: "STOP") ?? requested
            let resumed = await starts.time(of: "RESUME") ?? Timestamp.wallSeconds()
            await guest.stop(grace: .seconds(2))
            bare.withLock { $0.removeAll { $0 === guest } }
            guest = destination
            // Measured as a CEVM record measures it (ConsoleLog.interruption).
            let gap = await console.interruption(paused: stopped, resumed: resumed)
            let ticks = try await ticks(in: consolePath, through: resumed)
            guard let before = ConsoleProgress.rate(from: baselineStart, to: requested, in: ticks) else {
                throw BenchError("\(mib) MiB: no progress lines around the undisturbed window; see \(consolePath)")
            }
            let window = (stopped, resumed)
            let during = ConsoleProgress.rate(from: requested, to: resumed, in: ticks, pause: window)
            let beforePause = stopped - requested >= 0.1
                ? ConsoleProgress.rate(from: requested, to: stopped, in: ticks, pause: window).map { $0 / before } : nil
            let downtime = info["downtime"]?.doubleValue
            let transferred = info["ram"]?["transferred"]?.int64Value ?? 0
            rows.append(CheckpointBenchReport.Row(
                memoryMiB: mib, mechanism: Self.liveMigrationLabel, repetition: repetition, undisturbedRate: before,
                undisturbedDirtyMiBps: before * Double(pages) / 256, baselineSeconds: requested - baselineStart,
                checkpointRate: during, progress: during.map { before > 0 ? $0 / before : 0 }, progressBeforePause: beforePause,
                progressAfterResume: nil, guestLost: during == nil, guestsLostBefore: 0,
                failure: during == nil ? "no progress line within \(Self.lostAfter) s after the migration" : nil,
                guestPauseMs: (resumed - stopped) * 1000, requestToPauseMs: (stopped - requested) * 1000,
                requestToDurableMs: (resumed - requested) * 1000, consoleGapMs: gap.map { $0 * 1000 }, overlapMs: nil,
                migrationDowntimeMs: downtime, migrationTotalMs: info["total-time"]?.doubleValue,
                pauseOverDowntimeMs: downtime.map { (resumed - stopped) * 1000 - $0 }, recordBytes: 0,
                memoryStreamBytes: transferred, record: ""))
        }
        await guest.stop(grace: .seconds(2))
        bare.withLock { $0.removeAll { $0 === guest } }
        return rows
    }
}
