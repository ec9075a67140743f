#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Control
import Foundation
import NetSwitchControl
import Records
import Supervisor
import VMStore

/// One group checkpoint (DESIGN.md, "A network of VMs"): every cevm
/// network the members share is cut (`cutBegin` on each switch, over a
/// connection held for the whole checkpoint: if this process dies, each
/// switch aborts its cut and releases what it held), every member is
/// checkpointed at once by its own supervisor with its own mechanism (a
/// CEVM switch-over is the member's cut; stop-and-save and background
/// snapshot cut in place while paused), then each switch writes its
/// channel state into the group's staging directory, and the group's
/// manifest is committed last, by renaming the directory into place.
///
/// A failure before the commit: every cut aborted, no group record, the
/// staging directory removed (a coordinator killed leaves it to the next
/// group checkpoint's `removeUncommitted`). Members whose own checkpoint
/// succeeded keep their record as a single-VM record, and every error
/// after their checkpoints lists them: the running VM's disk chain is
/// layered on it, so it cannot be taken back.
struct GroupCheckpoint {
    struct Member {
        var name: VMName
        var paths: VMPaths
        var networks: [String]
    }

    let home: Home
    let members: [Member]
    let options: CheckpointOptions

    /// The members by name, or every VM on `network` whose supervisor runs.
    static func members(names: [String], network: String?, home: Home) throws -> [Member] {
        var chosen: [VMName] = []
        if let network {
            let net = try parseNetworkName(network)
            guard Files.exists(NetPaths(root: home.root, name: net).directory) else { throw CLIError("\(NetworkError.noSuchNetwork(network))") }
            for name in home.vmNames() where home.vm(name).supervisorAlive {
                if let spec = try? home.vm(name).readSpec(), spec.nics.contains(where: { $0.networkName == net.value }) { chosen.append(name) }
            }
            if chosen.isEmpty { throw CLIError("no running VM is attached to network '\(network)'") }
        }
        for text in names {
            let name = try parseName(text)
            if !chosen.contains(name) { chosen.append(name) }
        }
        return try chosen.map { name in
            let paths = home.vm(name)
            guard Files.exists(paths.spec) else { throw SupervisorError.unknownVM(name) }
            guard paths.supervisorAlive else { throw SupervisorError.notRunning(name) }
            let spec = try paths.readSpec()
            return Member(name: name, paths: paths, networks: Array(Set(spec.nics.compactMap(\.networkName))).sorted())
        }
    }

    struct Result {
        var record: GroupRecord
        var members: [(record: RecordManifest, directory: String)]
    }

    /// After a committed group: the members that no longer run and the
    /// networks whose switch is down. The group is whole and restores, but
    /// a member or a switch killed during its last phases is not what the
    /// user expects to find running after a success.
    func casualties() -> [String] {
        var found: [String] = []
        for member in members {
            let status = member.paths.readStatus()
            let state = status?.state
            // A killed supervisor's status still says running: its pid tells.
            let supervisorGone = status?.supervisorPID.map { kill($0, 0) != 0 && errno == ESRCH } ?? true
            if supervisorGone || !member.paths.supervisorAlive || state != .running {
                found.append("VM '\(member.name)' no longer runs (\(state?.rawValue ?? "no status")); the group restores it")
            }
        }
        for network in Set(members.flatMap(\.networks)).sorted() {
            guard let name = try? parseNetworkName(network) else { continue }
            if !FileLock.isHeld(NetPaths(root: home.root, name: name).lock) {
                found.append("network '\(network)''s switch is down; `cevm run` or `cevm restore` of a VM on it starts it again")
            }
        }
        return found
    }

    func run(progress: @escaping @Sendable (String) -> Void) async throws -> Result {
        let requested = Timestamp.monotonic()
        let store = GroupStore(root: home.root)
        store.removeUncommitted()
        let id = GroupStore.newID()
        // The lock keeps a concurrent group checkpoint's removeUncommitted
        // off this staging directory until it is committed or discarded.
        let (staging, stagingLock) = try store.staging(id: id)
        defer { withExtendedLifetime(stagingLock) {} }
        let networks = Array(Set(members.flatMap(\.networks))).sorted()
        var cuts: [String: SwitchSession] = [:]
        func abandon() async {
            for (_, session) in cuts { await session.abort(group: id) }
            store.discard(staging: staging)
        }
        do {
            for network in networks {
                let onIt = members.filter { $0.networks.contains(network) }.map(\.name.value)
                let session = try await SwitchSession.open(network: network, home: home)
                cuts[network] = session
                try await session.request(NetRequest(op: .cutBegin, group: id, members: onIt))
            }
        } catch {
            await abandon()
            throw CLIError("group checkpoint \(id): \(error)")
        }
        progress("\(id): checkpointing \(members.map(\.name.value).joined(separator: ", "))…")
        var memberOptions = options
        memberOptions.group = id
        // Every member at once; each answer awaited in member order.
        let requests = members.map { member in
            Task { [memberOptions] () -> Swift.Result<ControlResponse, any Error> in
                do { return .success(try await ControlClient.send(.checkpoint(memberOptions), to: member.paths, name: member.name)) } catch {
                    return .failure(error)
                }
            }
        }
        var outcomes: [Swift.Result<ControlResponse, any Error>] = []
        for request in requests { outcomes.append(await request.value) }
        var records: [(record: RecordManifest, directory: String)] = []
        var failures: [String] = []
        for (member, outcome) in zip(members, outcomes) {
            switch outcome {
            case .success(let response):
                if response.ok, let record = response.record {
                    records.append((record, response.recordDirectory ?? ""))
                } else {
                    failures.append("\(member.name): \(response.error ?? "checkpoint failed")")
                }
            case .failure(let error): failures.append("\(member.name): \(error)")
            }
        }
        // Members whose own record committed keep it, whatever happens to the group.
        let kept = records.map { "\($0.record.vm) \($0.record.id)" }
        let keptNote = kept.isEmpty ? "" : " (kept as single-VM records: \(kept.joined(separator: ", ")))"
        if !failures.isEmpty {
            await abandon()
            throw CLIError("group checkpoint \(id) failed, no group record: " + failures.joined(separator: "; ") + keptNote)
        }
        let fault = GroupFault.fromEnvironment
        func inject(_ step: GroupFault.Step) async {
            guard let fault else { return }
            await fault.trigger(at: step, lastMember: members.last?.paths) {
                guard let network = networks.first, let session = cuts[network] else { return nil }
                return try? await session.request(NetRequest(op: .status)).status?.pid
            }
        }
        await inject(.membersDone)
        var networkEntries: [GroupManifest.Network] = []
        do {
            for network in networks {
                guard let session = cuts[network] else { continue }
                let file = "channel-\(network).bin"
                let path = "\(staging)/\(file)"
                let reply = try await session.request(NetRequest(op: .cutEnd, group: id, path: path))
                guard let summary = reply.cut else { throw CLIError("network \(network): no cut summary in the switch's reply") }
                networkEntries.append(
                    GroupManifest.Network(
                        name: network, file: file, frames: summary.channelFrames, bytes: try Files.size(path),
                        sha256: try FileDigest.sha256(of: path), framesHeld: summary.framesHeld, mostHeld: summary.mostHeld,
                        longestHoldMs: summary.longestHoldMs))
            }
        } catch {
            await abandon()
            throw CLIError("group checkpoint \(id) failed, no group record: \(error)" + keptNote)
        }
        await inject(.channelSaved)
        for (_, session) in cuts { session.close() }
        let manifest = GroupManifest(
            id: id, createdAt: Timestamp.now(),
            members: zip(members, records).map { member, made in
                GroupManifest.Member(
                    vm: member.name.value, record: made.record.id, mechanism: made.record.mechanism, guestPauseMs: made.record.timings.guestPauseMs,
                    requestToDurableMs: made.record.timings.requestToDurableMs, networks: member.networks)
            },
            networks: networkEntries, requestToCommitMs: (Timestamp.monotonic() - requested) * 1000)
        do {
            let record = try store.commit(manifest, staging: staging)
            return Result(record: record, members: records)
        } catch {
            store.discard(staging: staging)
            throw CLIError("group checkpoint \(id) failed, no group record: \(error)" + keptNote)
        }
    }
}

/// A connection to one network's switch held for a whole group checkpoint
/// (the switch ties the cut to it). Blocking calls run off the pool.
final class SwitchSession: @unchecked Sendable {
    let network: String
    /// Guarded by `lock`.
    private var client: NetSwitchClient?
    private let lock = NSLock()

    private init(network: String, client: NetSwitchClient) {
        self.network = network
        self.client = client
    }

    static func open(network: String, home: Home) async throws -> SwitchSession {
        let paths = NetPaths(root: home.root, name: try parseNetworkName(network))
        if !FileLock.isHeld(paths.lock) { throw CLIError("network \(network): its switch is not running") }
        return try await Blocking.run { SwitchSession(network: network, client: try NetSwitchClient.connect(paths.controlSocket, timeoutSeconds: 30)) }
    }

    @discardableResult
    func request(_ request: NetRequest) async throws -> NetResponse {
        try await Blocking.run { [self] in
            lock.lock()
            defer { lock.unlock() }
            guard let client else { throw CLIError("network \(network): connection closed") }
            do {
                let (reply, fd) = try client.requireOK(request)
                if let fd { Glibc.close(fd) }
                return reply
            } catch { throw CLIError("network \(network): \(error)") }
        }
    }

    func abort(group: String) async {
        _ = try? await request(NetRequest(op: .cutAbort, group: group))
        close()
    }

    func close() {
        lock.lock()
        defer { lock.unlock() }
        client?.close()
        client = nil
    }
}
