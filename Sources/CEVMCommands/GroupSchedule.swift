import CEVMSystem
import Control
import Foundation
import NetSwitchControl
import Records
import Supervisor
import VMStore

/// Group checkpoints of every running VM on a network, on a schedule:
/// `cevm schedule --net NET --every D [--keep N]` writes
/// `nets/NET/group-schedule.json`; the network's switch process (`cevm net
/// serve`, long-lived like the network) runs them, keeps the N newest group
/// records of the network, and writes what happened to
/// `nets/NET/group-schedule-status.json`. The schedule survives a restart
/// of the switch; `--off` removes it.
struct GroupSchedule {
    struct Result: Codable, Sendable {
        var at: String
        var ok: Bool
        var group: String?
        var message: String?
        var removed: [String]
    }

    struct Status: Codable, Sendable {
        var summary: String
        var nextDueAt: String?
        var recent: [Result]
    }

    static func file(_ paths: NetPaths) -> String { "\(paths.directory)/group-schedule.json" }
    static func statusFile(_ paths: NetPaths) -> String { "\(paths.directory)/group-schedule-status.json" }

    static func read(_ paths: NetPaths) -> ScheduleOptions? {
        guard let bytes = try? Files.read(file(paths), limit: 1 << 20) else { return nil }
        guard let options = try? JSONDecoder().decode(ScheduleOptions.self, from: Data(bytes)), (try? options.validate()) != nil,
            options.everySeconds != nil
        else { return nil }
        return options
    }

    static func readStatus(_ paths: NetPaths) -> Status? {
        guard let bytes = try? Files.read(statusFile(paths), limit: 1 << 20) else { return nil }
        return try? JSONDecoder().decode(Status.self, from: Data(bytes))
    }

    /// The switch process's loop: checks the schedule file every second and
    /// takes a group checkpoint when one is due, until `stopped` fires.
    static func run(network: NetworkName, home: Home, stopped: AsyncSignal, log: @escaping @Sendable (String) -> Void) async {
        let paths = NetPaths(root: home.root, name: network)
        var current: ScheduleOptions?
        var next: Double?
        var recent = readStatus(paths)?.recent ?? []
        while !stopped.fired {
            let options = read(paths)
            if options != current {
                current = options
                next = options.flatMap { $0.everySeconds }.map { Timestamp.wallSeconds() + $0 }
                if let options { log("group schedule: \(options.summary)") } else if !recent.isEmpty || Files.exists(statusFile(paths)) {
                    Files.remove(statusFile(paths))
                    recent = []
                }
                write(paths, current: current, next: next, recent: recent)
            }
            if let options = current, let every = options.everySeconds, let due = next, Timestamp.wallSeconds() >= due {
                let result = await take(options, network: network, home: home)
                log("group schedule: " + (result.ok ? "took \(result.group ?? "?")" : "failed: \(result.message ?? "")")
                    + (result.removed.isEmpty ? "" : "; removed \(result.removed.joined(separator: " "))"))
                recent.append(result)
                if recent.count > 10 { recent.removeFirst(recent.count - 10) }
                next = Timestamp.wallSeconds() + every
                write(paths, current: current, next: next, recent: recent)
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    static func take(_ options: ScheduleOptions, network: NetworkName, home: Home) async -> Result {
        var result = Result(at: Timestamp.now(), ok: false, group: nil, message: nil, removed: [])
        do {
            let members = try GroupCheckpoint.members(names: [], network: network.value, home: home)
            let made = try await GroupCheckpoint(home: home, members: members, options: options.checkpoint).run { _ in }
            result.ok = true
            result.group = made.record.id
        } catch {
            result.message = "\(error)"
        }
        if let keep = options.keep {
            do { result.removed = try GroupStore(root: home.root).retain(keep: keep, network: network.value) } catch {
                result.message = (result.message.map { $0 + "; " } ?? "") + "retention failed: \(error)"
            }
        }
        return result
    }

    static func write(_ paths: NetPaths, current: ScheduleOptions?, next: Double?, recent: [Result]) {
        guard let current else { return }
        let status = Status(
            summary: current.summary, nextDueAt: next.map { Timestamp.format(wallSeconds: $0) }, recent: recent)
        if let bytes = try? JSONEncoder().encode(status) { try? Files.writeAtomically(Array(bytes), to: statusFile(paths)) }
    }
}
