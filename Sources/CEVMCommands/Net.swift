#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CEVMSystem
import Foundation
import NetSwitchControl
import NetSwitchServer
import Supervisor
import VMStore

/// `cevm net`: cevm networks, each a user-space learning L2 switch in a
/// process of its own under `$CEVM_HOME/nets/NET/`.
struct Net: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create, list, inspect and remove cevm networks (user-space L2 switches).",
        subcommands: [NetCreate.self, NetList.self, NetStatusCommand.self, NetRemove.self, NetServe.self])
}

func parseNetworkName(_ text: String) throws -> NetworkName {
    do { return try NetworkName(text) } catch { throw CLIError(error.description) }
}

extension CommonOptions {
    func net(_ name: NetworkName) -> NetPaths { NetPaths(root: home.root, name: name) }
}

/// One status request to a running switch.
func netStatus(_ paths: NetPaths) throws -> NetStatus {
    let client = try NetSwitchClient.connect(paths.controlSocket, timeoutSeconds: 10)
    defer { client.close() }
    let (reply, _) = try client.requireOK(NetRequest(op: .status))
    guard let status = reply.status else { throw CLIError("the switch answered status without one") }
    return status
}

struct NetCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create a network and start its switch.")

    @Argument(help: "The network's name.") var name: String

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let name = try parseNetworkName(name)
            let paths = common.net(name)
            if FileLock.isHeld(paths.lock) {
                let pids = FileLock.processesHolding(paths.lock).map(String.init).joined(separator: ", ")
                throw CLIError("network '\(name)' exists and its switch is running\(pids.isEmpty ? "" : " (pid \(pids))")")
            }
            try Files.makeDirectory(paths.directory, mode: 0o700)
            let status = try await startSwitch(name, home: common.home)
            if common.json { return try Output.json(status) }
            return Output.line("\(name): running (pid \(status.pid))")
        }
    }
}

/// Starts the switch of network `name` (its directory made) and waits
/// until it answers: by `cevm net create`, and by `cevm run` and `cevm
/// restore` for a network whose switch is not running.
func startSwitch(_ name: NetworkName, home: Home) async throws -> NetStatus {
    let paths = NetPaths(root: home.root, name: name)
    var environment = Executables.currentEnvironment()
    environment["CEVM_HOME"] = home.root
    let child = try ChildProcess.spawn(
        Executables.currentExecutable(), arguments: ["net", "serve", name.value], environment: environment, stdin: .null,
        stdout: .appendFile(paths.log), stderr: .appendFile(paths.log), newSession: true)
    let started = ContinuousClock.now
    while true {
        if let status = try? netStatus(paths) { return status }
        if let exit = child.exitStatus {
            // Another `cevm run` may have started it at the same moment.
            if let status = try? netStatus(paths) { return status }
            let log = (try? Files.readTail(paths.log, bytes: 2000)) ?? ""
            throw CLIError("the switch of network '\(name)' \(exit)" + (log.isEmpty ? "" : ": \(log)"))
        }
        if ContinuousClock.now - started > .seconds(30) {
            throw CLIError("the switch of network '\(name)' is not answering after 30 s; see \(paths.log)")
        }
        try await Task.sleep(for: .milliseconds(50))
    }
}

/// Every network a VM's NICs name must exist; a network whose switch is
/// not running (the host rebooted, it was killed) gets it started again.
func ensureNetworks(of spec: VMSpec, home: Home) async throws {
    for nic in spec.nics {
        guard case .network(let network) = nic.attachment else { continue }
        let name = try parseNetworkName(network)
        let paths = NetPaths(root: home.root, name: name)
        guard Files.exists(paths.directory) else { throw CLIError("\(NetworkError.noSuchNetwork(network))") }
        if !FileLock.isHeld(paths.lock) { _ = try await startSwitch(name, home: home) }
    }
}

struct NetListEntry: Codable {
    var name: String
    var state: String
    var ports: Int?
}

struct NetList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List networks: name, state (running or stopped), ports.")

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let root = NetPaths.netsDirectory(root: common.home.root)
            let names = ((try? Files.list(root)) ?? []).compactMap { try? NetworkName($0) }.sorted()
            let entries = names.map { name -> NetListEntry in
                let paths = common.net(name)
                guard FileLock.isHeld(paths.lock) else { return NetListEntry(name: name.value, state: "stopped") }
                return NetListEntry(name: name.value, state: "running", ports: (try? netStatus(paths))?.ports.count)
            }
            if common.json { return try Output.json(entries) }
            var rows = [["NAME", "STATE", "PORTS"]]
            for e in entries { rows.append([e.name, e.state, e.ports.map(String.init) ?? "-"]) }
            Output.line(table(rows))
        }
    }
}

struct NetStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show a network's ports, the instance on each, frame and byte counters, and drops.")

    @Argument(help: "The network's name.") var name: String

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let name = try parseNetworkName(name)
            let paths = common.net(name)
            guard Files.isDirectory(paths.directory) else { throw CLIError("no network '\(name)' (create it with `cevm net create \(name)`)") }
            guard FileLock.isHeld(paths.lock) else { throw CLIError("network '\(name)' is stopped (start it with `cevm net create \(name)`)") }
            let status = try netStatus(paths)
            if common.json { return try Output.json(status) }
            var lines = [
                "network:   \(status.network) (switch pid \(status.pid))",
                "frames:    \(status.framesReceived) received, \(status.forwarded) forwarded, \(status.drops) dropped",
            ]
            if let promotes = status.promotes {
                lines.append(
                    "switch-overs: \(promotes); frames held \(status.framesHeld ?? 0), redelivered \(status.framesRedelivered ?? 0), "
                        + "carried over \(status.framesCarriedOver ?? 0); switch-overs with unread frames lost \(status.lostAtSwitchOver ?? 0)")
            }
            if status.ports.isEmpty {
                lines.append("ports:     none")
            } else {
                var rows = [["PORT", "VM", "INSTANCE", "MAC", "STATE", "IN", "OUT", "QUEUED", "HELD/REDELIVERED/CARRIED", "DROPS"]]
                for p in status.ports {
                    let drops = p.drops.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                    rows.append([
                        "\(p.port)", p.vm, "\(p.instance)", p.mac ?? "-", p.state + (p.held ? " (held)" : ""),
                        "\(p.framesIn)/\(p.bytesIn)B", "\(p.framesOut)/\(p.bytesOut)B", "\(p.queuedFrames)",
                        "\(p.framesHeld ?? 0)/\(p.framesRedelivered ?? 0)/\(p.framesCarriedOver ?? 0)", drops.isEmpty ? "0" : drops,
                    ])
                }
                lines.append(table(rows))
            }
            Output.line(lines.joined(separator: "\n"))
        }
    }
}

struct NetRemove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Stop a network's switch and remove it (refused while a VM is attached, unless --force).")

    @Argument(help: "The network's name.") var name: String

    @Flag(help: "Remove it even while VMs are attached (they lose the network).") var force = false

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let name = try parseNetworkName(name)
            let paths = common.net(name)
            guard Files.isDirectory(paths.directory) else { throw CLIError("no network '\(name)'") }
            if FileLock.isHeld(paths.lock) {
                do {
                    let client = try NetSwitchClient.connect(paths.controlSocket, timeoutSeconds: 10)
                    defer { client.close() }
                    _ = try client.requireOK(NetRequest(op: .shutdown, force: force))
                } catch NetSwitchClient.Error.refused(let message) {
                    throw CLIError("network '\(name)' not removed: \(message.replacingOccurrences(of: "force to stop anyway", with: "use --force"))")
                } catch {
                    // No answer: end the holder of the lock.
                    guard force else { throw CLIError("network '\(name)': the switch does not answer (\(error)); use --force") }
                    for pid in FileLock.processesHolding(paths.lock) { kill(pid, SIGTERM) }
                }
                let started = ContinuousClock.now
                while FileLock.isHeld(paths.lock) {
                    if ContinuousClock.now - started > .seconds(10) { throw CLIError("the switch of network '\(name)' did not stop within 10 s") }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            try FileManager.default.removeItem(atPath: paths.directory)
            if !common.json { Output.line("\(name): removed") }
        }
    }
}

/// `cevm net serve NET`: the switch process `cevm net create` starts.
struct NetServe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Run a network's switch (started by `cevm net create`).", shouldDisplay: false)

    @Argument var name: String

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let name = try parseNetworkName(name)
            let configuration = NetSwitchServer.Configuration(log: { message in
                FileHandle.standardError.write(Data("\(Timestamp.now()) \(message)\n".utf8))
            })
            let server = try NetSwitchServer.start(name: name, paths: common.net(name), configuration: configuration)
            // SIGTERM (the system, `cevm net rm --force`'s fallback), SIGINT and SIGHUP stop it
            // as a `shutdown` request does: ports closed, control.sock and the pid file removed.
            let sources = [SIGTERM, SIGINT, SIGHUP].map { number in
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler { server.stop() }
                source.resume()
                return source
            }
            // Group checkpoints of the network's VMs on a schedule (`cevm schedule --net`).
            let stopped = AsyncSignal()
            let scheduler = Task {
                await GroupSchedule.run(network: name, home: common.home, stopped: stopped) { message in
                    FileHandle.standardError.write(Data("\(Timestamp.now()) \(message)\n".utf8))
                }
            }
            await server.waitUntilStopped()
            stopped.fire()
            scheduler.cancel()
            for source in sources { source.cancel() }
        }
    }
}
