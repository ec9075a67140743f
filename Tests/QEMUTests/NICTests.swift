#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QEMU
import QMP
import Testing
import TestSupport

@Suite struct NICCommandLineTests {
    func config(heldLock: Int32? = 7, nics: [InstanceConfig.NIC], withhold: Bool = false) -> InstanceConfig {
        InstanceConfig(
            name: "vm", memoryMiB: 64, vcpus: 1, accel: .tcg, boot: .disk, drive: nil, qmpSocket: "/run/q.sock", heldLock: heldLock,
            nics: nics, withholdHostForwards: withhold)
    }

    func values(after flag: String, in args: [String]) -> [String] {
        args.indices.filter { args[$0] == flag && $0 + 1 < args.count }.map { args[$0 + 1] }
    }

    @Test func userNICsWithTheirForwards() {
        let args = QEMUCommandLine.arguments(
            for: config(nics: [
                .init(mac: "52:54:00:00:00:01", backend: .user(hostForwards: ["tcp:127.0.0.1:8080-:22", "udp::5353-:53"])),
                .init(mac: "52:54:00:00:00:02", backend: .user(hostForwards: [])),
            ]))
        #expect(
            values(after: "-netdev", in: args) == [
                "user,id=nic0,hostfwd=tcp:127.0.0.1:8080-:22,hostfwd=udp::5353-:53", "user,id=nic1",
            ])
        #expect(
            values(after: "-device", in: args).filter { $0.hasPrefix("virtio-net") } == [
                "virtio-net-pci,netdev=nic0,mac=52:54:00:00:00:01,id=net0,addr=0x10",
                "virtio-net-pci,netdev=nic1,mac=52:54:00:00:00:02,id=net1,addr=0x11",
            ])
    }

    /// New_VM of a CEVM checkpoint: the same devices, no forwards.
    @Test func withheldForwardsLeaveTheDevicesAlone() {
        let nics: [InstanceConfig.NIC] = [.init(mac: "52:54:00:00:00:01", backend: .user(hostForwards: ["tcp::8080-:22"]))]
        let old = QEMUCommandLine.arguments(for: config(nics: nics))
        let new = QEMUCommandLine.arguments(for: config(nics: nics, withhold: true))
        #expect(values(after: "-netdev", in: new) == ["user,id=nic0"])
        #expect(values(after: "-device", in: old) == values(after: "-device", in: new))
    }

    /// Stream NICs take descriptors 3, 4… after the held lock, in NIC order.
    @Test func streamNICsNameTheDescriptorsQEMUInherits() {
        let nics: [InstanceConfig.NIC] = [
            .init(mac: "52:54:00:00:00:01", backend: .stream(descriptor: 40)),
            .init(mac: "52:54:00:00:00:02", backend: .user(hostForwards: [])),
            .init(mac: "52:54:00:00:00:03", backend: .stream(descriptor: 12)),
        ]
        let locked = config(heldLock: 9, nics: nics)
        #expect(locked.inheritedDescriptors == [9, 40, 12])
        #expect(locked.childDescriptor(ofNIC: 0) == 4)
        #expect(locked.childDescriptor(ofNIC: 1) == nil)
        #expect(locked.childDescriptor(ofNIC: 2) == 5)
        #expect(
            values(after: "-netdev", in: QEMUCommandLine.arguments(for: locked)) == [
                "stream,id=nic0,server=off,addr.type=fd,addr.str=4", "user,id=nic1",
                "stream,id=nic2,server=off,addr.type=fd,addr.str=5",
            ])
        let unlocked = config(heldLock: nil, nics: nics)
        #expect(unlocked.inheritedDescriptors == [40, 12])
        #expect(unlocked.childDescriptor(ofNIC: 0) == 3)
        #expect(unlocked.childDescriptor(ofNIC: 2) == 4)
    }

    /// A value that reached the config unchecked still cannot add options.
    @Test func hostileValuesStayInsideTheirOption() {
        let args = QEMUCommandLine.arguments(
            for: config(nics: [.init(mac: "52:54:00:00:00:01,id=x", backend: .user(hostForwards: ["tcp::1-:2,script=/bin/sh"]))]))
        #expect(values(after: "-netdev", in: args) == ["user,id=nic0,hostfwd=tcp::1-:2,,script=/bin/sh"])
        #expect(values(after: "-device", in: args).contains("virtio-net-pci,netdev=nic0,mac=52:54:00:00:00:01,,id=x,id=net0,addr=0x10"))
    }

    @Test func noNICsNoNetworkOptions() {
        let args = QEMUCommandLine.arguments(for: config(nics: []))
        #expect(!args.contains("-netdev"))
    }
}

/// Real QEMU with both kinds of NIC, paused: `-netdev stream` on an
/// inherited socketpair end, `-netdev user` with a forward on a free port,
/// which `hostfwd_remove` and `hostfwd_add` move.
@Suite(.enabled(if: haveQEMU, "qemu-system-x86_64 is not installed"))
struct NICInstanceTests {
    @Test func qemuStartsWithAStreamNICOnAnInheritedSocket() async throws {
        let dir = "/tmp/cevm-qemu-nic-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        defer { pair.forEach { close($0) } }
        let port = try freeTCPPort()
        let config = InstanceConfig(
            name: "t", memoryMiB: 32, vcpus: 1, accel: .tcg, boot: .disk, drive: nil, qmpSocket: "\(dir)/qmp.sock",
            incoming: true,
            nics: [
                .init(mac: "52:54:00:aa:bb:01", backend: .stream(descriptor: pair[1])),
                .init(mac: "52:54:00:aa:bb:02", backend: .user(hostForwards: ["tcp:127.0.0.1:\(port)-:7"])),
            ])
        let instance = try await QEMUInstance.launch(config, stderrLog: "\(dir)/stderr", console: { _ in })
        defer { Task { await instance.stop() } }
        let network = try await instance.humanMonitor("info network")
        #expect(network.contains("macaddr=52:54:00:aa:bb:01"), "\(network)")
        #expect(network.contains("nic0: index=0,type=stream"), "\(network)")
        #expect(network.contains("nic1: index=0,type=user"), "\(network)")
        // QEMU holds the socket: its end (descriptor 3, no lock here) is the peer of ours.
        let link = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(instance.pid)/fd/3")
        #expect(link.hasPrefix("socket:"))
        #expect(canConnectTCP(port: port))
        try await instance.removeHostForward(nic: 1, hostSide: "tcp:127.0.0.1:\(port)")
        #expect(!canConnectTCP(port: port))
        await #expect(throws: QEMUError.self) { try await instance.removeHostForward(nic: 1, hostSide: "tcp:127.0.0.1:\(port)") }
        try await instance.addHostForward(nic: 1, rule: "tcp:127.0.0.1:\(port)-:7")
        #expect(canConnectTCP(port: port))
        // The port is bound: a second forward on it is refused, in words.
        await #expect(throws: QEMUError.self) { try await instance.addHostForward(nic: 1, rule: "tcp:127.0.0.1:\(port)-:7") }
    }
}

