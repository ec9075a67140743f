#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import NetSwitchControl
import VMStore

/// `NetworkPorts` on cevm networks: each request goes to the network's
/// switch over its control socket (`$CEVM_HOME/nets/NET/control.sock`),
/// and an attached port's socket comes back with the reply.
public struct SwitchPorts: NetworkPorts {
    /// `$CEVM_HOME`.
    public let root: String

    public init(root: String) { self.root = root }

    func paths(_ network: String) throws -> NetPaths {
        do { return NetPaths(root: root, name: try NetworkName(network)) } catch { throw NetworkError.noSuchNetwork(network) }
    }

    /// One request to the network's switch, off the cooperative pool.
    func request(_ network: String, _ request: NetRequest) async throws -> (NetResponse, Int32?) {
        let paths = try paths(network)
        guard Files.exists(paths.directory) else { throw NetworkError.noSuchNetwork(network) }
        return try await Blocking.run {
            let client: NetSwitchClient
            do { client = try NetSwitchClient.connect(paths.controlSocket, timeoutSeconds: 10) } catch {
                throw NetworkError.switchDown(network, "\(error)")
            }
            defer { client.close() }
            return try client.request(request)
        }
    }

    public func port(network: String, vm: VMName, instance: Int, mac: MACAddress, standby: Bool) async throws -> NetworkPort {
        let ask = NetRequest(op: standby ? .standby : .attach, vm: vm.value, instance: instance, mac: mac.description)
        var (reply, fd) = try await request(network, ask)
        if !reply.ok && !standby {
            // A port left by an instance whose supervisor died without
            // detaching it (the switch cannot see a QEMU end): this
            // supervisor holds the VM's lock, so no instance of the VM
            // lives; the stale ports go, then the attach is asked again.
            if let fd { close(fd) }
            let (status, _) = try await request(network, NetRequest(op: .status))
            let stale = status.status?.ports.filter { $0.vm == vm.value } ?? []
            for port in stale { await detach(network: network, port: port.port) }
            if !stale.isEmpty { (reply, fd) = try await request(network, ask) }
        }
        guard reply.ok, let id = reply.port, let fd else {
            if let fd { close(fd) }
            throw NetworkError.refused(network, reply.error ?? "no port in the reply")
        }
        return NetworkPort(network: network, id: id, descriptor: fd)
    }

    public func promote(network: String, vm: VMName, port: Int) async throws -> Int {
        let (reply, fd) = try await request(network, NetRequest(op: .promote, vm: vm.value, port: port))
        if let fd { close(fd) }
        guard reply.ok else { throw NetworkError.refused(network, reply.error ?? "promote refused") }
        return reply.redelivered ?? 0
    }

    public func cutInPlace(network: String, vm: VMName, group: String) async throws {
        let (reply, fd) = try await request(network, NetRequest(op: .cutInPlace, vm: vm.value, group: group))
        if let fd { close(fd) }
        guard reply.ok else { throw NetworkError.refused(network, reply.error ?? "cut refused") }
    }

    public func detach(network: String, port: Int) async {
        if let (_, fd) = try? await request(network, NetRequest(op: .detach, port: port)), let fd { close(fd) }
    }
}
