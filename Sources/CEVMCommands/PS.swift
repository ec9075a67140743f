import ArgumentParser
import Foundation
import VMStore

struct PS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ps", abstract: "List VMs.")

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            var reports: [VMReport] = []
            for name in common.home.vmNames() {
                if let report = try? await VMReport.load(home: common.home, name: name) { reports.append(report) }
            }
            if common.json { return try Output.json(reports) }
            var rows = [["NAME", "STATE", "QEMU PID", "ACCEL", "CPUSET", "MEMORY", "UP"]]
            for report in reports {
                let live = report.status?.state.isLive == true && report.supervisorAlive
                rows.append([
                    report.name.value, report.state,
                    live ? report.status?.qemuPID.map(String.init) ?? "-" : "-",
                    report.status?.accel?.split(separator: " ").first.map(String.init) ?? "-",
                    report.spec?.cpuset?.description ?? "any",
                    report.spec.map { "\($0.memoryMiB)M" } ?? "-",
                    live ? age(since: report.status?.startedAt) : "-",
                ])
            }
            Output.line(table(rows))
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one VM's state.")

    /// One line per NIC: `nic0:        52:54:00:12:34:56, user, hostfwd tcp:127.0.0.1:8080-:22`;
    /// a forward the running instance lost (a CEVM checkpoint could not move it) says so.
    static func describeNICs(_ nics: [NIC], lost: [String]) -> [String] {
        nics.enumerated().map { index, nic in
            let label = "nic\(index):".padding(toLength: 13, withPad: " ", startingAt: 0)
            let lostHere = nic.hostForwards.filter { lost.contains("nic\(index) \($0)") }
            return label + "\(nic.mac), \(nic.summary)" + (lostHere.isEmpty ? "" : " (lost: \(lostHere.map(\.description).joined(separator: ", ")))")
        }
    }

    @Argument(help: "The VM's name.") var name: String

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let report = try await VMReport.load(home: common.home, name: try parseName(name))
            if common.json { return try Output.json(report) }
            var lines = ["name:        \(report.name)", "state:       \(report.state)"]
            if let status = report.status {
                if let pid = status.supervisorPID, report.supervisorAlive { lines.append("supervisor:  pid \(pid)") }
                if let pid = status.qemuPID, report.supervisorAlive { lines.append("qemu:        pid \(pid)\(status.qemuVersion.map { ", QEMU \($0)" } ?? "")") }
                if let accel = status.accel { lines.append("accel:       \(accel)") }
                if !status.vcpuThreads.isEmpty { lines.append("vcpu tids:   \(status.vcpuThreads.map(String.init).joined(separator: " "))") }
                if let started = status.startedAt { lines.append("started:     \(started)") }
                if let reason = status.exitReason { lines.append("last exit:   \(reason)") }
                if let message = status.message { lines.append("message:     \(message)") }
            }
            if let spec = report.spec {
                lines.append("memory:      \(spec.memoryMiB) MiB, \(spec.vcpus) vCPU(s), machine \(spec.machine)")
                // The instance's CPU set (a CEVM checkpoint may have moved it), else the spec's.
                let running = report.supervisorAlive ? report.status?.cpuset : nil
                lines.append("cpuset:      \(running ?? spec.cpuset?.description ?? "not pinned")")
                switch spec.boot {
                case .kernel(let kernel, _, let append):
                    lines.append("boot:        \(spec.bundledGuest ? "bundled guest" : kernel)")
                    lines.append("append:      \(append)")
                case .disk: lines.append("boot:        from disk")
                }
                if let disk = spec.disk {
                    lines.append("disk:        \(common.home.vm(report.name).overlay) over \(disk.base) (\(disk.baseFormat), \(disk.sizeBytes >> 20) MiB)")
                }
                let lost = report.supervisorAlive ? report.status?.lostHostForwards ?? [] : []
                lines += Self.describeNICs(spec.nics, lost: lost)
            }
            if report.supervisorAlive, let schedule = report.status?.schedule { lines += ScheduleCommand.describe(schedule) }
            Output.line(lines.joined(separator: "\n"))
        }
    }
}
