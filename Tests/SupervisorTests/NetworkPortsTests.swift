#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QEMU
import Synchronization
import Testing
import VMStore

@testable import Supervisor

/// A network that hands out one end of a socketpair per port and keeps the other.
final class SocketPairPorts: NetworkPorts {
    let asked = Mutex<[(network: String, vm: String, instance: Int, mac: String)]>([])
    let kept = Mutex<[Int32]>([])

    let detached = Mutex<[Int]>([])
    let promoted = Mutex<[Int]>([])

    func promote(network: String, vm: VMName, port: Int) async throws -> Int {
        promoted.withLock { $0.append(port) }
        return 0
    }

    func detach(network: String, port: Int) async { detached.withLock { $0.append(port) } }

    func port(network: String, vm: VMName, instance: Int, mac: MACAddress, standby: Bool) async throws -> NetworkPort {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw NetworkError.noSuchNetwork(network)
        }
        asked.withLock { $0.append((network, vm.value, instance, mac.description)) }
        let id = kept.withLock {
            $0.append(pair[0])
            return $0.count
        }
        return NetworkPort(network: network, id: id, descriptor: pair[1])
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

/// `moveHostForwards` on two real (paused) QEMU instances, as a CEVM
/// checkpoint has them at its switch-over.
@Suite(.enabled(if: Executables.find(QEMUCommandLine.defaultBinary) != nil, "qemu-system-x86_64 is not installed"))
struct HostForwardMoveTests {
    func launch(_ dir: String, _ name: String, forwards: [String], withhold: Bool) async throws -> QEMUInstance {
        let config = InstanceConfig(
            name: name, memoryMiB: 32, vcpus: 1, accel: .tcg, boot: .disk, drive: nil, qmpSocket: "\(dir)/\(name).sock", incoming: true,
            nics: [.init(mac: "52:54:00:00:00:01", backend: .user(hostForwards: forwards))], withholdHostForwards: withhold)
        return try await QEMUInstance.launch(config, stderrLog: "\(dir)/\(name).stderr", console: { _ in })
    }

    func nics(port: Int) throws -> [NIC] {
        try NIC.make([try NIC.Request.parse("user,hostfwd=tcp:127.0.0.1:\(port)-:7")])
    }

    @Test func forwardsMoveFromOldToNew() async throws {
        let dir = "/tmp/cevm-fwd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let probe = try listeningPort()
        close(probe.fd)
        let port = probe.port
        let nics = try nics(port: port)
        let rules = nics[0].hostForwards.map(\.description)
        let old = try await launch(dir, "old", forwards: rules, withhold: false)
        let new = try await launch(dir, "new", forwards: rules, withhold: true)
        defer { Task { await old.stop(); await new.stop() } }
        let logged = Mutex<[String]>([])
        let lost = await Supervisor.moveHostForwards(nics, from: old, to: new) { line in logged.withLock { $0.append(line) } }
        #expect(lost.isEmpty)
        #expect(logged.withLock { $0 } == ["host forwards moved to the new instance: nic0 tcp:127.0.0.1:\(port)-:7"])
        // New_VM now holds it: removing it there works; Old_VM has none left.
        try await new.removeHostForward(nic: 0, hostSide: "tcp:127.0.0.1:\(port)")
        await #expect(throws: QEMUError.self) { try await old.removeHostForward(nic: 0, hostSide: "tcp:127.0.0.1:\(port)") }
    }

    /// Another process took the port: the forward is lost, said and logged, and nothing fails.
    @Test func aForwardNewCannotBindIsLost() async throws {
        let dir = "/tmp/cevm-fwd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let taken = try listeningPort()
        defer { close(taken.fd) }
        let nics = try nics(port: taken.port)
        let rules = nics[0].hostForwards.map(\.description)
        let old = try await launch(dir, "old", forwards: rules, withhold: true)
        let new = try await launch(dir, "new", forwards: rules, withhold: true)
        defer { Task { await old.stop(); await new.stop() } }
        let logged = Mutex<[String]>([])
        let lost = await Supervisor.moveHostForwards(nics, from: old, to: new) { line in logged.withLock { $0.append(line) } }
        #expect(lost == ["nic0 tcp:127.0.0.1:\(taken.port)-:7"])
        let lines = logged.withLock { $0 }
        #expect(lines.contains { $0.contains("is lost") }, "\(lines)")
    }
}

/// A socket listening on a free port of 127.0.0.1, and the port.
func listeningPort() throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound, listen(fd, 1) == 0 else {
        close(fd)
        throw SystemError("bind", errno: errno)
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
