#if canImport(Glibc)
import Glibc
#endif
import Control
import CEVMSystem
import Supervisor
import VMStore

/// What `ps` and `status` know of one VM: its spec, its last status, and
/// whether a supervisor holds it now.
struct VMReport: Encodable {
    var name: VMName
    var state: String
    var supervisorAlive: Bool
    var status: VMStatus?
    var spec: VMSpec?
    /// The process holding the VM's lock when it is not the supervisor.
    var heldBy: String?

    /// Reads the VM's files; asks a live supervisor over its control socket.
    static func load(home: Home, name: VMName) async throws -> VMReport {
        let paths = home.vm(name)
        guard Files.exists(paths.spec) else { throw SupervisorError.unknownVM(name) }
        let spec = try? paths.readSpec()
        let holder = paths.lockHolder
        let alive = holder != nil
        if let holder, !holder.isSupervisor {
            // A process of the VM outlived its supervisor (nothing cevm
            // starts should: its QEMU dies with it): say so, never "lost".
            return VMReport(name: name, state: "orphaned", supervisorAlive: false, status: paths.readStatus(), spec: spec, heldBy: holder.description)
        }
        var status = paths.readStatus()
        if alive, let live = try? await ControlClient.send(.status, to: paths, name: name, timeout: .seconds(5)).status {
            status = live
        }
        var state = status?.state.rawValue ?? "stopped"
        if !alive, let status, status.state.isLive {
            // The file says live but no supervisor holds the lock: it died.
            state = "lost"
        }
        return VMReport(name: name, state: state, supervisorAlive: alive, status: status, spec: spec)
    }
}

/// Seconds since a timestamp written by `Timestamp`, as "1h02m", "35s".
func age(since stamp: String?) -> String {
    guard let stamp, let then = Timestamp.parse(stamp) else { return "-" }
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    let seconds = max(0, Int(Double(now.tv_sec) - then))
    if seconds >= 3600 { return "\(seconds / 3600)h\(String(format: "%02d", (seconds % 3600) / 60))m" }
    if seconds >= 60 { return "\(seconds / 60)m\(String(format: "%02d", seconds % 60))s" }
    return "\(seconds)s"
}

/// Left-aligned columns.
func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    let widths = (0..<first.count).map { column in rows.map { $0[column].count }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}
