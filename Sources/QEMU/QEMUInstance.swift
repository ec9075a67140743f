#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QMP
import Synchronization

/// Why an instance ended: the process's own status, plus what QEMU said on
/// QMP before it went (a SHUTDOWN event names guest power-off or reset).
public struct ExitReason: Sendable, Equatable, Codable, CustomStringConvertible {
    public var status: ExitStatus
    /// SHUTDOWN's `reason` ("guest-shutdown", "guest-reset", "host-signal", "host-qmp-quit", ...).
    public var shutdownReason: String?
    /// True when the guest asked for it (SHUTDOWN's `guest`).
    public var byGuest: Bool
    /// True when cevm asked for it (stop, teardown).
    public var requested: Bool

    public var description: String {
        var parts: [String] = []
        if let shutdownReason {
            switch shutdownReason {
            case "guest-shutdown": parts.append("the guest powered off")
            case "guest-reset": parts.append("the guest rebooted (instances run with -no-reboot)")
            case "guest-panic": parts.append("the guest panicked")
            default: parts.append("QEMU shut down (\(shutdownReason))")
            }
        } else if requested {
            parts.append("stopped on request")
        }
        parts.append("QEMU \(status)")
        return parts.joined(separator: "; ")
    }
}

/// One QEMU process and everything that belongs to it: its QMP session, its
/// console pipe, its threads' placement, its end. The instance is the only
/// owner of the process; `stop` is idempotent.
///
/// Lifecycle: `launch` spawns QEMU paused (`-S`), waits for its QMP socket,
/// pins every thread, and (unless the config is `incoming`) lets the guest
/// run. Console bytes go to the `console` callback from a reader thread.
public final class QEMUInstance: Sendable {
    public let config: InstanceConfig
    public let process: ChildProcess
    public let qmp: QMPClient
    public let stderrLog: String
    private let state: Mutex<State>

    private struct State {
        var shutdownReason: String?
        var shutdownByGuest = false
        var stopRequested = false
        var cpuset: CPUSet?
    }

    public var pid: pid_t { process.pid }
    public var qemuVersion: String { qmp.greeting.versionString }
    public var cpuset: CPUSet? { state.withLock { $0.cpuset } }

    private init(config: InstanceConfig, process: ChildProcess, qmp: QMPClient, stderrLog: String) {
        self.config = config
        self.process = process
        self.qmp = qmp
        self.stderrLog = stderrLog
        self.state = Mutex(State())
    }

    /// Starts QEMU for `config`.
    /// - Parameters:
    ///   - stderrLog: QEMU's stderr is appended there; its tail explains early exits.
    ///   - console: receives the guest's serial output as it arrives (on a reader thread).
    ///   - cpuset: every thread of the process is pinned there before the guest runs.
    ///   - startTimeout: how long QEMU may take to open its QMP socket.
    public static func launch(
        _ config: InstanceConfig,
        binary: String = QEMUCommandLine.defaultBinary,
        stderrLog: String,
        cpuset: CPUSet? = nil,
        startTimeout: Duration = .seconds(30),
        console: @escaping @Sendable ([UInt8]) -> Void
    ) async throws -> QEMUInstance {
        guard Executables.find(binary) != nil else { throw QEMUError.qemuMissing(binary: binary) }
        unlink(config.qmpSocket)
        var pipeFDs: [Int32] = [-1, -1]
        if pipe(&pipeFDs) != 0 { throw SystemError("pipe", errno: errno) }
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let child: ChildProcess
        do {
            // Tied to this process: QEMU gets SIGKILL when its owner dies, so
            // no instance outlives a killed supervisor (and the VM's lock,
            // which it may inherit, is released with it).
            child = try ChildProcess.spawn(
                binary, arguments: QEMUCommandLine.arguments(for: config),
                stdin: .null, stdout: .descriptor(pipeFDs[1]), stderr: .appendFile(stderrLog),
                tiedToParent: true, inherit: config.inheritedDescriptors)
        } catch {
            close(pipeFDs[0])
            close(pipeFDs[1])
            throw error
        }
        close(pipeFDs[1])
        startConsoleReader(fd: pipeFDs[0], console: console)

        let client: QMPClient
        do {
            client = try await connectQMP(config.qmpSocket, child: child, timeout: startTimeout, stderrLog: stderrLog)
        } catch {
            throw await startFailure(error, child: child, stderrLog: stderrLog)
        }
        let instance = QEMUInstance(config: config, process: child, qmp: client, stderrLog: stderrLog)
        instance.watchEvents()
        do {
            // QMP socket mode: 0600 (the run directory is 0700 as well).
            chmod(config.qmpSocket, 0o600)
            if let cpuset { try instance.pin(to: cpuset) }
            if !config.incoming { try await instance.resume() }
        } catch {
            let reason = await startFailure(error, child: child, stderrLog: stderrLog)
            await instance.stop()
            throw reason
        }
        return instance
    }

    /// What to report when starting failed: QEMU often opens its QMP socket
    /// before it loads the kernel or opens a drive, so the QMP session
    /// breaks when it then gives up; QEMU's own words (its stderr) say why.
    private static func startFailure(_ error: any Error, child: ChildProcess, stderrLog: String) async -> any Error {
        if let status = await child.wait(timeout: .seconds(1)) {
            return QEMUError.exitedAtStart(status: status, stderr: tail(of: stderrLog))
        }
        await child.terminate(grace: .seconds(2))
        return error
    }

    /// Connects to QMP, retrying while QEMU creates its socket; fails at once
    /// if QEMU exits first.
    private static func connectQMP(_ path: String, child: ChildProcess, timeout: Duration, stderrLog: String) async throws -> QMPClient {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let status = child.exitStatus {
                throw QEMUError.exitedAtStart(status: status, stderr: tail(of: stderrLog))
            }
            if Files.exists(path) {
                do { return try await QMPClient.connect(unixSocketPath: path, timeout: .seconds(10)) } catch QMPError.connectionFailed {
                    // the socket exists but does not accept yet
                }
            }
            if ContinuousClock.now >= deadline {
                throw QEMUError.startTimedOut(seconds: Double(timeout.components.seconds), stderr: tail(of: stderrLog))
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    private static func startConsoleReader(fd: Int32, console: @escaping @Sendable ([UInt8]) -> Void) {
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 16384)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    console(Array(buffer[0..<n]))
                } else if n == 0 || errno != EINTR {
                    break
                }
            }
            close(fd)
        }
        thread.start()
    }

    private func watchEvents() {
        let events = qmp.events()
        Task { [weak self] in
            for await event in events where event.name == "SHUTDOWN" {
                self?.state.withLock { state in
                    state.shutdownReason = event.data["reason"]?.stringValue
                    state.shutdownByGuest = event.data["guest"]?.boolValue ?? false
                }
            }
        }
    }

    /// Pins every thread of the process (vCPUs, I/O, main loop) to `cpuset`.
    @discardableResult
    public func pin(to cpuset: CPUSet) throws -> [pid_t] {
        let threads = try Affinity.pin(process: pid, to: cpuset)
        state.withLock { $0.cpuset = cpuset }
        return threads
    }

    /// The threads of an outgoing migration: QEMU names them when started
    /// with `-name …,debug-threads=on` (as cevm starts every instance):
    /// "live_migration" up to QEMU 9.0, "mig/src/…" from 9.1 on (the main
    /// thread, the return path, multifd senders).
    public func migrationThreads() -> [pid_t] {
        let names = (try? Affinity.threadNames(of: pid)) ?? [:]
        return names.filter { Self.isOutgoingMigrationThread($0.value) }.keys.sorted()
    }

    public static func isOutgoingMigrationThread(_ name: String) -> Bool {
        name == "live_migration" || name.hasPrefix("mig/src/") || name.hasPrefix("multifdsend_")
    }

    /// Pins the outgoing migration's threads to `cpuset` (the guest's vCPUs
    /// stay where they are), waiting up to `within` for QEMU to start them
    /// after `migrate` (it does once the socket connects). Returns the
    /// threads pinned; empty when none appeared.
    public func pinMigrationThreads(to cpuset: CPUSet, within: Duration = .milliseconds(500)) async -> [pid_t] {
        let deadline = ContinuousClock.now + within
        while true {
            let threads = migrationThreads()
            if !threads.isEmpty {
                return threads.filter { (try? Affinity.set(thread: $0, to: cpuset)) != nil }
            }
            if ContinuousClock.now > deadline || process.exitStatus != nil { return [] }
            do { try await Task.sleep(for: .milliseconds(1)) } catch { return [] }
        }
    }

    /// QMP `cont`, waiting out a migration QEMU has not finalized yet
    /// (``QMPClient/resume(finalizeWait:)``).
    public func resume() async throws {
        do { try await qmp.resume() } catch let error as QMPError { throw QEMUError.qmp(error) }
    }

    /// The vCPU thread ids from QMP `query-cpus-fast`.
    public func vcpuThreads() async throws -> [pid_t] {
        let reply: JSONValue
        do { reply = try await qmp.execute("query-cpus-fast") } catch let error as QMPError { throw QEMUError.qmp(error) }
        return (reply.arrayValue ?? []).compactMap { $0["thread-id"]?.intValue.map { pid_t($0) } }
    }

    /// QMP `query-status`'s status ("running", "paused", "postmigrate", "inmigrate", ...).
    public func runState() async throws -> String {
        do { return try await qmp.execute("query-status")["status"]?.stringValue ?? "unknown" } catch let error as QMPError {
            throw QEMUError.qmp(error)
        }
    }

    /// Waits until the process ends; nil when the calling task is cancelled first.
    public func exited() async -> ExitReason? {
        guard let status = await process.exited() else { return nil }
        return reason(status)
    }

    /// Waits until the process ends; true when it ended without being asked
    /// to (`stop`), false when asked or when the calling task is cancelled first.
    public func endedUnasked() async -> Bool {
        guard let reason = await exited() else { return false }
        return !reason.requested
    }

    /// Waits until the process ends by itself.
    public func waitForExit() async -> ExitReason {
        let status = await process.wait()
        return reason(status)
    }

    /// Ends the process: SIGTERM, then SIGKILL after `grace`. Idempotent.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> ExitReason {
        state.withLock { $0.stopRequested = true }
        let status = await process.terminate(grace: grace)
        await qmp.close()
        return reason(status)
    }

    /// The exit reason once the process has ended.
    public var exitReason: ExitReason? { process.exitStatus.map(reason) }

    private func reason(_ status: ExitStatus) -> ExitReason {
        state.withLock {
            ExitReason(status: status, shutdownReason: $0.shutdownReason, byGuest: $0.shutdownByGuest, requested: $0.stopRequested)
        }
    }

    /// The last lines of a log file, for error messages.
    public static func tail(of path: String, lines: Int = 5) -> String {
        guard let text = try? Files.readString(path) else { return "" }
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n").trimmingSpaces()
    }
}
