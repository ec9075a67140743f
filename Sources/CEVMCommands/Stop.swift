#if canImport(Glibc)
import Glibc
#endif
import Control
import ArgumentParser
import CEVMSystem
import Foundation
import Supervisor
import VMStore

struct Stop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a VM: its QEMU gets SIGTERM, then SIGKILL; its supervisor exits.")

    @OptionGroup var vm: VMArgument

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let (name, paths) = try vm.existing(in: common.home)
            let holder = paths.lockHolder
            if case .instance(let pid, _)? = holder, Self.isQEMU(pid: pid, of: paths) {
                // A QEMU of the VM that outlived its supervisor holds its lock.
                try await Self.end(orphan: pid, paths: paths, name: name)
            } else if holder != nil {
                Output.progress("\(name): stopping…")
                _ = try await ControlClient.send(.stop, to: paths, name: name)
                let deadline = ContinuousClock.now + .seconds(60)
                while paths.supervisorAlive {
                    if ContinuousClock.now > deadline { throw SupervisorError.controlFailed(name, "still running 60 s after stop") }
                    try await Task.sleep(for: .milliseconds(50))
                }
            } else if let status = paths.readStatus(), status.state.isLive, let pid = status.qemuPID,
                Self.isQEMU(pid: pid, of: paths)
            {
                // The supervisor died and left its QEMU behind: end it here.
                kill(pid, SIGTERM)
                var status = status
                status.state = .stopped
                status.exitReason = "QEMU pid \(pid) ended by `cevm stop` after its supervisor was lost"
                status.qemuPID = nil
                try paths.writeStatus(status)
            } else {
                throw SupervisorError.notRunning(name)
            }
            Output.endProgress()
            let status = paths.readStatus()
            if common.json { return try Output.json(status) }
            Output.line("\(name) stopped\(status?.exitReason.map { ": \($0)" } ?? "")")
        }
    }

    /// SIGTERM, then SIGKILL after 5 s, to a QEMU left without its
    /// supervisor; returns once the VM's lock is free.
    static func end(orphan pid: Int32, paths: VMPaths, name: VMName) async throws {
        kill(pid, SIGTERM)
        let started = ContinuousClock.now
        var killed = false
        while paths.supervisorAlive {
            if !killed && ContinuousClock.now - started > .seconds(5) {
                kill(pid, SIGKILL)
                killed = true
            }
            if ContinuousClock.now - started > .seconds(30) {
                throw SupervisorError.controlFailed(name, "QEMU pid \(pid) still holds the VM's lock 30 s after SIGKILL")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        if var status = paths.readStatus() {
            status.state = .stopped
            status.exitReason = "QEMU pid \(pid) ended by `cevm stop` after its supervisor was lost"
            status.qemuPID = nil
            try paths.writeStatus(status)
        }
    }

    /// True when `pid` is a QEMU of this VM (its command line names the VM's
    /// run directory), so a recycled pid is never signalled.
    static func isQEMU(pid: Int32, of paths: VMPaths) -> Bool {
        guard let cmdline = try? Files.read("/proc/\(pid)/cmdline") else { return false }
        return String(decoding: cmdline, as: UTF8.self).contains(paths.runDirectory)
    }
}

struct Remove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a stopped VM and all its files.")

    @OptionGroup var vm: VMArgument

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let (name, paths) = try vm.existing(in: common.home)
            if paths.supervisorAlive { throw CLIError("VM '\(name)' is running: `cevm stop \(name)` first") }
            try FileManager.default.removeItem(atPath: paths.directory)
            if common.json { return try Output.json(["removed": name.value]) }
            Output.line("\(name) removed")
        }
    }
}
