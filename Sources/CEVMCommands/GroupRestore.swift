import ArgumentParser
import CEVMSystem
import Control
import Foundation
import NetSwitchControl
import Records
import Supervisor
import VMStore

/// `cevm restore GROUP_ID`: every member restored from its record into its
/// own name and held paused, reattached to its networks; then each
/// network's switch writes the recorded in-flight frames to their
/// receivers, once; only then do the members run. A member that cannot be
/// restored stops the others that were: no member runs alone.
struct GroupRestore {
    let home: Home
    let id: String
    let json: Bool

    struct Summary: Encodable {
        var group: String
        var members: [String]
        var framesDelivered: Int
    }

    func run() async throws {
        try await Output.reporting {
            let group = try GroupStore(root: home.root).load(id: id)
            Output.progress("verifying group \(id)…")
            try group.verify()
            // Every channel file parses before anything starts.
            var channels: [String: ChannelState] = [:]
            for network in group.manifest.networks {
                do { channels[network.name] = try ChannelState(decoding: try Files.read(group.channelPath(network), limit: 256 << 20)) } catch {
                    throw CLIError("group \(id): \(group.channelPath(network)): \(error)")
                }
            }
            let members = group.manifest.members
            for member in members {
                let name = try parseName(member.vm)
                if home.vm(name).supervisorAlive {
                    throw CLIError("group \(id): member '\(member.vm)' is running: stop every member first (`cevm stop \(member.vm)`)")
                }
            }
            var restored: [VMName] = []
            func stopRestored() async {
                for name in restored { _ = try? await ControlClient.send(.stop, to: home.vm(name), name: name, timeout: .seconds(30)) }
            }
            for member in members {
                let name = try parseName(member.vm)
                do {
                    var one = try Restore.parse([member.record, "--paused"])
                    try await one.run()
                    restored.append(name)
                } catch {
                    await stopRestored()
                    throw CLIError("group \(id): member '\(member.vm)' (record \(member.record)) was not restored; the others are stopped again")
                }
            }
            var delivered = 0
            do {
                for network in group.manifest.networks {
                    guard let state = channels[network.name], !state.frames.isEmpty else { continue }
                    let session = try await SwitchSession.open(network: network.name, home: home)
                    defer { session.close() }
                    for member in members where member.networks.contains(network.name) {
                        let reply = try await session.request(
                            NetRequest(op: .inject, vm: member.vm, path: group.channelPath(network)))
                        delivered += reply.injected ?? 0
                    }
                }
                for name in restored {
                    let response = try await ControlClient.send(.resume, to: home.vm(name), name: name)
                    guard response.ok else { throw CLIError("\(name): \(response.error ?? "resume refused")") }
                }
            } catch {
                await stopRestored()
                throw CLIError("group \(id): \(error); the members are stopped again")
            }
            if json { return try Output.json(Summary(group: id, members: members.map(\.vm), framesDelivered: delivered)) }
            Output.line("\(id) restored: \(members.map(\.vm).joined(separator: ", ")) running; \(delivered) recorded frame(s) delivered")
        }
    }
}
