#if canImport(Glibc)
import Glibc
#endif
import QEMU
import Synchronization
import Testing
import VMStore

@testable import Supervisor

/// A network that hands out one end of a socketpair per port and keeps the other.
final class SocketPairPorts: NetworkPorts {
    let asked = Mutex<[(network: String, vm: String, instance: Int, mac: String)]>([])
    let kept = Mutex<[Int32]>([])

    func port(network: String, vm: VMName, instance: Int, mac: MACAddress) async throws -> Int32 {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw NetworkError.noSuchNetwork(network)
        }
        asked.withLock { $0.append((network, vm.value, instance, mac.description)) }
        kept.withLock { $0.append(pair[0]) }
        return pair[1]
    }

    deinit { kept.withLock { $0.forEach { close($0) } } }
}

@Suite struct NetworkPortsTests {
    func spec(_ values: [String]) throws -> VMSpec {
        VMSpec(
            name: try VMName("vm1"), memoryMiB: 64, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35", boot: .disk, disk: nil,
            bundledGuest: false, nics: try NIC.make(values.map { try NIC.Request.parse($0) }))
    }

    @Test func withoutNetworksANetworkNICDoesNotStart() async throws {
        let spec = try spec(["user", "net=lab"])
        let error = await #expect(throws: NetworkError.self) { try await InstanceNICs.make(spec: spec, instance: 0, ports: nil) }
        #expect(error == .noSuchNetwork("lab"))
        #expect(error?.description.contains("network 'lab' does not exist") == true)
        #expect(Supervisor.defaultNetworkPorts == nil)
        // User NICs alone need no network.
        let user = try await InstanceNICs.make(spec: try self.spec(["user,hostfwd=tcp::8080-:22"]), instance: 0, ports: nil)
        #expect(user.nics.map(\.backend) == [.user(hostForwards: ["tcp::8080-:22"])])
        #expect(user.descriptors.isEmpty)
    }

    @Test func aNetworkNICGetsAPortForItsInstanceAndMAC() async throws {
        let spec = try spec(["user", "net=lab,mac=52:54:00:00:00:05"])
        let ports = SocketPairPorts()
        let nics = try await InstanceNICs.make(spec: spec, instance: 3, ports: ports)
        #expect(nics.descriptors.count == 1)
        let fd = try #require(nics.descriptors.first)
        #expect(nics.nics.last == .init(mac: "52:54:00:00:00:05", backend: .stream(descriptor: fd)))
        #expect(nics.nics.first?.mac == spec.nics.first?.mac.description)
        let asked = ports.asked.withLock { $0 }
        #expect(asked.count == 1)
        #expect(asked.first?.network == "lab" && asked.first?.vm == "vm1" && asked.first?.instance == 3)
        #expect(asked.first?.mac == "52:54:00:00:00:05")
        nics.close()
        #expect(fcntl(fd, F_GETFD) == -1, "the supervisor's copy is closed")
    }
}
