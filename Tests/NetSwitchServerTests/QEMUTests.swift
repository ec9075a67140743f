#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import NetSwitchControl
import Testing

/// A real QEMU on a switch port: the descriptor the switch passed becomes
/// QEMU's `-netdev stream` (as its descriptor 3), joined through a hub to
/// user-mode networking, whose gateway answers ARP. The fake port's
/// request reaches QEMU and the answer comes back through the switch: both
/// directions of QEMU's framing, and learning of QEMU's MAC.
@Suite(.serialized) struct RealQEMUTests {
    static let qemu = Executables.find("qemu-system-x86_64")

    @Test(.enabled(if: RealQEMUTests.qemu != nil))
    func userModeGatewayAnswersARPThroughTheSwitch() async throws {
        let h = try Harness()
        let client = try h.client()
        let (reply, fd) = try client.requireOK(NetRequest(op: .attach, vm: "q", instance: 1))
        client.close()
        let qemuEnd = try #require(fd)
        let qemuPort = try #require(reply.port)
        let scratchLog = h.scratch.file("qemu.log")
        let process = try ChildProcess.spawn(
            try #require(Self.qemu),
            arguments: [
                "-machine", "none", "-nodefaults", "-display", "none",
                "-netdev", "stream,id=s1,addr.type=fd,addr.str=3", "-netdev", "user,id=u1",
                "-netdev", "hubport,id=h1,hubid=0,netdev=s1", "-netdev", "hubport,id=h2,hubid=0,netdev=u1",
            ],
            stdout: .appendFile(scratchLog), stderr: .appendFile(scratchLog), tiedToParent: true, inherit: [qemuEnd])
        close(qemuEnd)

        let fake = try h.attach("fake")
        let mac: [UInt8] = [0x52, 0x54, 0, 0, 0, 0x0F]
        // ARP: who has 10.0.2.2 (the user-mode gateway)? tell 10.0.2.15.
        let arp: [UInt8] =
            [UInt8](repeating: 0xFF, count: 6) + mac + [0x08, 0x06] + [0, 1, 0x08, 0x00, 6, 4, 0, 1] + mac + [10, 0, 2, 15]
            + [UInt8](repeating: 0, count: 6) + [10, 0, 2, 2]
        try fake.send(arp)
        let answer = try #require(try fake.frame(timeout: 15_000), "no answer; QEMU said: \((try? Files.readString(scratchLog)) ?? "")")
        #expect(Array(answer[0..<6]) == mac)
        #expect(Array(answer[12..<14]) == [0x08, 0x06])
        #expect(Array(answer[20..<22]) == [0, 2])
        #expect(Array(answer[28..<32]) == [10, 0, 2, 2])
        let gateway = answer[6..<12].map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: ":")
        #expect(try h.status().macTable[gateway] == qemuPort)
        _ = await process.terminate(grace: .seconds(2))
        await h.stop()
    }
}
