#if canImport(Glibc)
import Glibc
#endif
import Control
import CEVMSystem
import Foundation
import Logging
import QEMU
import Records
import ServiceLifecycle
import VMStore

/// The per-VM supervisor: the one process that owns a VM's QEMU instance,
/// its console log and its control socket, for as long as the VM runs.
///
/// It holds the VM's `lock` (flock) for its whole life, so a second
/// supervisor of the same VM cannot start, and a crashed one leaves no
/// stale lock. Its mutable state belongs to one actor, `VMState`, which
/// alone writes `status.json`. The VM, the control socket and the
/// scheduler run as the services of one `ServiceGroup`: the VM's end ends
/// the group, and a graceful shutdown (SIGTERM, SIGINT or SIGHUP when
/// `handlesSignals`) stops the VM as `requestStop()` does.
public final class Supervisor: Sendable {
    public struct Options: Sendable {
        /// How long the guest must stay up after QEMU starts it before the
        /// VM counts as running rather than dying at boot.
        public var bootGrace: Duration = .seconds(3)
        /// How long a guest with a ready marker may take to print it.
        public var bootTimeout: Duration = .seconds(180)
        public var qemuBinary: String = QEMUCommandLine.defaultBinary
        /// Called on every state change (for --foreground progress).
        public var onStatus: (@Sendable (VMStatus) -> Void)?
        /// A record directory to restore from instead of booting.
        public var restore: String?
        /// With `restore`: the guest stays paused (state `paused`) until a
        /// `resume` request.
        public var restorePaused = false
        /// The caller checked the record being restored page by page
        /// against its digests (`Record.verifyRestorable`, as `cevm restore`
        /// does before it touches anything): its pages are then streamed to
        /// QEMU without being hashed a second time. False: the supervisor
        /// checks every page as it streams it.
        public var restorePagesChecked = false
        /// SIGTERM, SIGINT and SIGHUP stop the VM gracefully. A handler is
        /// process-wide: only the process the supervisor owns (the CLI's
        /// entry points) asks for it, not a test running several.
        public var handlesSignals = false
        /// Connects network NICs to their cevm network; nil: the switches
        /// of the cevm networks under `$CEVM_HOME` (`SwitchPorts`).
        public var networkPorts: (any NetworkPorts)?

        public init() {}

        /// `--boot-grace`, checked (0 to 3600 s) by the CLI and the supervisor alike.
        public static func bootGrace(seconds: Double) throws(InvalidValue) -> Duration {
            try Validate.duration(seconds: seconds, "--boot-grace", in: 0...3600)
        }
    }

    /// How network NICs reach their networks.
    var networkPorts: any NetworkPorts { options.networkPorts ?? SwitchPorts(root: home.root) }

    /// Removes ports whose instance ended (or never started) from their networks.
    func detach(_ ports: [NetworkPort]) async {
        for port in ports { await networkPorts.detach(network: port.network, port: port.id) }
    }

    public let home: Home
    public let name: VMName
    public let paths: VMPaths
    let options: Options
    /// The descriptor of the VM's flock, inherited by every QEMU instance
    /// (`InstanceConfig.heldLock`): a QEMU of the VM, even one that somehow
    /// outlived this process, keeps a new supervisor from starting another.
    let lock: Int32?
    /// The VM's state and the one writer of `status.json`.
    let state: VMState
    /// Fired by `requestStop()` (and the group's graceful shutdown): the
    /// VM's instance is stopped.
    let stopSignal = AsyncSignal()
    /// Samples the vCPU threads' run time for each checkpoint's cost.
    let sampler = VCPUSampler()

    init(home: Home, name: VMName, options: Options, lock: Int32? = nil) {
        self.lock = lock
        self.home = home
        self.name = name
        let paths = home.vm(name)
        self.paths = paths
        self.options = options
        let writer = StatusWriter(
            write: { try paths.writeStatus($0) },
            failed: { error in Self.log("cannot write \(paths.status): \(error)") })
        self.state = VMState(status: VMStatus(name: name, state: .starting), writer: writer, onStatus: options.onStatus)
    }

    /// Runs the VM until it stops; returns the final status.
    /// Throws `SupervisorError.alreadyRunning` when another supervisor owns it.
    public static func run(home: Home, name: VMName, options: Options = Options()) async throws -> VMStatus {
        let paths = home.vm(name)
        guard Files.exists(paths.spec) else { throw SupervisorError.unknownVM(name) }
        guard let lock = try FileLock.tryAcquire(paths.lock) else {
            throw SupervisorError.lockHeld(name, paths.lockHolder ?? .supervisor(pid: paths.readStatus()?.supervisorPID))
        }
        let supervisor = Supervisor(home: home, name: name, options: options, lock: lock.descriptor)
        let result = await supervisor.supervise()
        withExtendedLifetime(lock) {}
        return result
    }

    /// The status as the state owner has it now.
    public var status: VMStatus {
        get async { await state.status }
    }

    /// Changes the status; `VMState` numbers the snapshot and writes it.
    @discardableResult
    func update(_ change: @Sendable (inout VMStatus) -> Void) async -> VMStatus {
        await state.update(change)
    }

    /// A diagnostic line on stderr (the supervisor log when detached).
    func log(_ message: String) {
        Self.log(message)
    }

    static func log(_ message: String) {
        FileHandle.standardError.write(Data("\(Timestamp.now()) \(message)\n".utf8))
    }

    /// Asks the supervisor to stop its VM.
    public func requestStop() { stopSignal.fire() }

    /// Runs the VM, the control socket and the scheduler as one service
    /// group; returns the final status once it is on disk.
    private func supervise() async -> VMStatus {
        await update {
            $0 = VMStatus(name: name, state: .starting)
            $0.supervisorPID = getpid()
        }
        // Shut down in reverse order: the VM first (stopped as a stop
        // request does), then the scheduler, then the control socket, which
        // answers until the VM is down. The VM's own end shuts the group down.
        let services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: ControlService(supervisor: self), successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore),
            .init(service: SchedulerService(supervisor: self), successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore),
            .init(
                service: VMService(supervisor: self), successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup),
        ]
        var logger = Logger(label: "cevm.supervisor") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .notice
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services, gracefulShutdownSignals: options.handlesSignals ? [.sigterm, .sigint, .sighup] : [],
                logger: logger))
        do { try await group.run() } catch { log("supervisor services: \(error)") }
        sampler.stop()
        unlink(paths.controlSocket)
        await stopDisk()
        // A stop returns only once its final status is on disk.
        await state.flush()
        return await state.status
    }

    /// The VM service's work: boot, then run until the VM ends.
    func runVM() async {
        do {
            try await boot()
        } catch {
            await stopDisk()
            await detach(await state.networkPorts)
            await update {
                $0.state = .failed
                $0.message = "\(error)"
            }
            return
        }
        await startScheduler(await storedSchedule())
        await runUntilEnd()
        // A checkpoint under way when the guest ended (its job done, say)
        // finishes first: it commits its record or fails on its own terms,
        // and its caller gets the answer before the control socket closes.
        await state.checkpointEnded()
        // The instance is gone: its ports leave their networks.
        await detach(await state.networkPorts)
        await state.setNetworkPorts([])
    }

    /// Answers the control socket until cancelled.
    func serveControl() async throws {
        try await ControlServer(path: paths.controlSocket) { [self] request in
            switch request {
            case .status:
                return ControlResponse(ok: true, status: await status)
            case .stop:
                requestStop()
                return ControlResponse(ok: true, status: await status)
            case .checkpoint(let checkpointOptions):
                do {
                    let record = try await checkpoint(checkpointOptions)
                    var response = ControlResponse(ok: true, status: await status)
                    response.record = record.manifest
                    response.recordDirectory = record.directory
                    return response
                } catch {
                    return ControlResponse(ok: false, status: await status, error: "\(error)")
                }
            case .resume:
                do {
                    try await resumeHeld()
                    return ControlResponse(ok: true, status: await status)
                } catch {
                    return ControlResponse(ok: false, status: await status, error: "\(error)")
                }
            case .schedule(let options):
                do {
                    try await setSchedule(options)
                    return ControlResponse(ok: true, status: await status)
                } catch {
                    return ControlResponse(ok: false, status: await status, error: "\(error)")
                }
            }
        }.run(ready: {})
    }

    private func stopDisk() async {
        if let disk = await state.takeDisk() {
            await disk.stop()
        }
    }

    private func boot() async throws {
        try paths.checkSocketPaths()
        let spec = try paths.readSpec()
        try Files.makeDirectory(paths.runDirectory, mode: 0o700)
        try Files.makeDirectory(paths.diskDirectory, mode: 0o700)
        RecordStore(paths: paths).removeUncommitted()
        try await Retention.recover(store: RecordStore(paths: paths))
        var drive: InstanceConfig.Drive?
        if try await DiskPreparation.prepare(spec: spec, paths: paths) {
            let service = try await DiskService.start(paths: paths) { [self] in log($0) }
            await state.setDisk(service)
            drive = service.drive
        }
        var accel = try await resolveAccelerator(spec.accel)
        let console = try ConsoleLog(path: paths.consoleLog)
        // A restored guest is already past its boot: no marker to wait for.
        let ready = options.restore == nil ? spec.readyMarker.map { console.signal(whenLineContains: $0) } : nil
        func launch(_ accel: AccelProbe.Result) async throws -> QEMUInstance {
            // With every host forward bound: a restore too (the record's
            // host connections are gone with the process that held them).
            let nics = try await InstanceNICs.make(spec: spec, instance: 0, ports: networkPorts)
            defer { nics.close() }
            let config = InstanceConfig(
                name: spec.name.value, memoryMiB: spec.memoryMiB, vcpus: spec.vcpus, machine: spec.machine,
                accel: accel.accelerator, boot: spec.boot.instanceBoot, drive: drive,
                qmpSocket: paths.qmpSocket(instance: 0), incoming: options.restore != nil,
                cpuModel: spec.cpuModel.map { $0 == VMSpec.automaticCPUModel ? QEMUCommandLine.defaultCPUModel(for: accel.accelerator) : $0 },
                ramPaddingKiB: spec.ramPaddingKiB ?? 0, heldLock: lock, nics: nics.nics)
            do {
                let instance = try await QEMUInstance.launch(
                    config, binary: options.qemuBinary, stderrLog: "\(paths.runDirectory)/qemu0.stderr",
                    cpuset: spec.cpuset, console: console.sink(instance: 0))
                await state.setNetworkPorts(nics.ports)
                return instance
            } catch {
                await detach(nics.ports)
                throw error
            }
        }
        let instance: QEMUInstance
        do {
            instance = try await launch(accel)
        } catch QEMUError.exitedAtStart(let status, let stderr) where spec.accel == .auto && accel.accelerator == .kvm {
            // The probe's guest ran under KVM, this one did not (hosts whose
            // KVM half works): `auto` falls back to TCG, as it would have
            // had the probe failed.
            log("QEMU under KVM \(status) at start (\(stderr.split(separator: "\n").first ?? "")); falling back to TCG")
            accel = AccelProbe.recordKVMFailure(cacheDirectory: home.cacheDirectory, binary: options.qemuBinary, reason: stderr)
            instance = try await launch(accel)
        }
        await state.booted(console: console)
        if let restore = options.restore {
            do { try await restoreMemory(into: instance, from: restore, resume: !options.restorePaused) } catch {
                await instance.stop()
                throw error
            }
        }
        let vcpus = (try? await instance.vcpuThreads()) ?? []
        sampler.track(pid: instance.pid, threads: vcpus.map { Int32($0) })
        await state.adopt(instance)
        let accelDescription = "\(accel.accelerator.rawValue) (\(accel.reason))"
        await update {
            $0.state = .booting
            $0.qemuPID = instance.pid
            $0.accel = accelDescription
            $0.cpuset = spec.cpuset?.description
            $0.vcpuThreads = vcpus.map { Int32($0) }
            $0.qemuVersion = instance.qemuVersion
            $0.startedAt = Timestamp.now()
            $0.exitReason = nil
            $0.message = nil
        }
        // A guest that dies before its ready marker (or within the grace
        // period, for a guest without one) died at boot.
        var ended: ExitReason?
        if let ready {
            ended = await firstOf(instance: instance, within: options.bootTimeout, or: ready)
            if ended == nil && !ready.fired && !stopSignal.fired {
                await instance.stop()
                throw SupervisorError.startFailed(
                    name, "no '\(spec.readyMarker ?? "")' on the console within \(options.bootTimeout); see \(paths.consoleLog)")
            }
        } else {
            ended = await firstOf(instance: instance, within: options.bootGrace)
        }
        if let reason = ended {
            console.finish(instance: 0)
            let tail = Self.consoleTail(paths.consoleLog)
            await update {
                $0.state = .failed
                $0.exitReason = reason.description
                $0.qemuPID = nil
                $0.message = SupervisorError.diedAtBoot(name, reason: reason.description, console: tail).description
            }
            throw SupervisorError.diedAtBoot(name, reason: reason.description, console: tail)
        }
        await update { $0.state = options.restore != nil && options.restorePaused ? .paused : .running }
    }

    /// A restored VM held paused runs.
    func resumeHeld() async throws {
        guard await status.state == .paused, let instance = await state.instance else {
            throw SupervisorError.checkpointFailed("VM '\(name)' is not held paused")
        }
        try await instance.resume()
        await update { $0.state = .running }
    }

    /// Waits for the instance to end, or for `duration` to pass (nil), or a
    /// stop request (which stops the instance). The waits are children of
    /// one task group: the first decides, the others are cancelled.
    private func firstOf(instance: QEMUInstance, within duration: Duration?, or signal: AsyncSignal? = nil) async -> ExitReason? {
        var contenders: [@Sendable () async -> ExitReason?] = [
            { await instance.exited() },
            { [stopSignal] in
                await stopSignal.wait()
                return nil
            },
        ]
        if let signal {
            contenders.append {
                await signal.wait()
                return nil
            }
        }
        if let duration {
            contenders.append {
                try? await Task.sleep(for: duration)
                return nil
            }
        }
        let first = await firstFinished(contenders) ?? nil
        if first == nil && stopSignal.fired { return await stopInstance(instance) }
        return first
    }

    private func stopInstance(_ instance: QEMUInstance) async -> ExitReason {
        await update { $0.state = .stopping }
        return await instance.stop()
    }

    private func runUntilEnd() async {
        var ended: ExitReason?
        while ended == nil {
            guard let instance = await state.instance else { return }
            var reason = await firstOf(instance: instance, within: nil)
            if reason == nil { reason = await instance.waitForExit() }
            // A CEVM checkpoint replaced the instance: the VM goes on in the new one.
            if await state.instance !== instance { continue }
            ended = reason
        }
        guard let reason = ended else { return }
        let byRequestOrGuest = reason.requested || reason.shutdownReason == "guest-shutdown"
        await update {
            $0.state = byRequestOrGuest ? .stopped : .failed
            $0.exitReason = reason.description
            $0.qemuPID = nil
            $0.vcpuThreads = []
            if !byRequestOrGuest { $0.message = "the instance ended unexpectedly: \(reason)" }
        }
    }

    private func resolveAccelerator(_ choice: AccelChoice) async throws -> AccelProbe.Result {
        switch choice {
        case .tcg: return AccelProbe.Result(accelerator: .tcg, reason: "requested")
        case .kvm:
            _ = try await AccelProbe.require(.kvm, binary: options.qemuBinary)
            return AccelProbe.Result(accelerator: .kvm, reason: "requested")
        case .auto:
            return await AccelProbe.resolveAuto(cacheDirectory: home.cacheDirectory, binary: options.qemuBinary)
        }
    }

    /// The console's last lines; a kernel panic's headline is kept in front
    /// when its stack trace pushed it out of the tail.
    static func consoleTail(_ path: String, lines: Int = 10) -> String {
        // The last 256 KiB at most: the log may be large.
        guard let text = try? Files.readTail(path, bytes: 256 << 10) else { return "" }
        let all = text.split(separator: "\n").map { ConsoleLog.parse($0).text }
        var tail = Array(all.suffix(lines))
        if let panic = all.last(where: { $0.contains("Kernel panic") }), !tail.contains(panic) {
            tail = [panic, "..."] + tail
        }
        return tail.joined(separator: "\n")
    }
}

extension VMSpec.Boot {
    var instanceBoot: InstanceConfig.Boot {
        switch self {
        case .kernel(let kernel, let initrd, let append): return .kernel(kernel: kernel, initrd: initrd, append: append)
        case .disk: return .disk
        }
    }
}

/// A one-shot signal many tasks can wait for; a wait ends at once when its
/// task is cancelled.
public final class AsyncSignal: Sendable {
    private let latch = Latch<Bool>()

    public init() {}

    public var fired: Bool { latch.value != nil }

    public func fire() { latch.set(true) }

    /// Fires; true for the one call that fired it.
    @discardableResult
    public func fireFirst() -> Bool { latch.set(true) }

    /// Returns once fired, or when the calling task is cancelled.
    public func wait() async { _ = await latch.wait() }
}
