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
    /// Copies: member NAME restored as NAME+suffix on networks NET+suffix.
    let suffix: String?
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
            let suffix = suffix ?? ""
            for member in members {
                let name = try parseName(member.vm + suffix)
                for network in member.networks { _ = try parseNetworkName(network + suffix) }
                if home.vm(name).supervisorAlive {
                    throw CLIError(
                        "group \(id): '\(name)' is running: stop it first (`cevm stop \(name)`)"
                            + (suffix.isEmpty ? ", or restore copies with --suffix" : ""))
                }
            }
            var restored: [VMName] = []
            func stopRestored() async {
                for name in restored { _ = try? await ControlClient.send(.stop, to: home.vm(name), name: name, timeout: .seconds(30)) }
            }
            for member in members {
                let name = try parseName(member.vm + suffix)
                do {
                    let copy = suffix.isEmpty ? [] : ["--name=\(name.value)", "--network-suffix=\(suffix)"]
                    let one = try Restore.parse([member.record, "--paused"] + copy)
                    try await one.run()
                    restored.append(name)
                } catch {
                    await stopRestored()
                    throw CLIError("group \(id): member '\(member.vm)' (record \(member.record)) was not restored (\(error)); the others are stopped again")
                }
            }
            var delivered = 0
            do {
                for network in group.manifest.networks {
                    guard let state = channels[network.name], !state.frames.isEmpty else { continue }
                    let session = try await SwitchSession.open(network: network.name + suffix, home: home)
                    defer { session.close() }
                    for member in members where member.networks.contains(network.name) {
                        var inject = NetRequest(op: .inject, vm: member.vm + suffix, path: group.channelPath(network))
                        inject.recordedAs = member.vm
                        let reply = try await session.request(inject)
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
            let names = members.map { $0.vm + suffix }
            if json { return try Output.json(Summary(group: id, members: names, framesDelivered: delivered)) }
            Output.line("\(id) restored: \(names.joined(separator: ", ")) running; \(delivered) recorded frame(s) delivered")
        }
    }
}
