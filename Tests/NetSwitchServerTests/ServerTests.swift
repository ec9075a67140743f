#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import NetSwitch
import NetSwitchControl
import NetSwitchServer
import TestSupport
import Testing

/// An Ethernet frame from `src` to `dst` with a payload tag.
func ethernet(_ src: UInt64, _ dst: UInt64, tag: UInt8, size: Int = 80) -> [UInt8] {
    func mac(_ v: UInt64) -> [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: v >> (40 - 8 * UInt64($0))) } }
    var bytes = mac(dst) + mac(src) + [0x08, 0x00]
    while bytes.count < size { bytes.append(tag) }
    return bytes
}

func framed(_ frame: [UInt8]) -> [UInt8] {
    let n = UInt32(frame.count)
    return [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)] + frame
}

let macA: UInt64 = 0x5254_0000_000A
let macB: UInt64 = 0x5254_0000_000B
let macC: UInt64 = 0x5254_0000_000C
let broadcast: UInt64 = 0xFFFF_FFFF_FFFF

/// A fake QEMU: the descriptor the switch passed, read and written with QEMU's framing.
final class FakeQEMU {
    let fd: Int32
    let port: Int

    init(fd: Int32, port: Int) {
        self.fd = fd
        self.port = port
    }

    deinit { close(fd) }

    func send(_ frame: [UInt8]) throws { try Files.writeAll(fd, framed(frame)) }

    /// Exactly `count` bytes, or nil if they do not come within `timeout` ms.
    func read(exactly count: Int, timeout: Int32 = 3000) throws -> [UInt8]? {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: count)
        while out.count < count {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, timeout) <= 0 { return nil }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, count - out.count, 0) }
            if n <= 0 { return nil }
            out += buffer[0..<n]
        }
        return out
    }

    func frame(timeout: Int32 = 3000) throws -> [UInt8]? {
        guard let header = try read(exactly: 4, timeout: timeout) else { return nil }
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        return try read(exactly: length, timeout: timeout)
    }

    /// True when nothing arrives within `timeout` ms.
    func silent(timeout: Int32 = 200) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, timeout) == 0
    }
}

final class Harness {
    let scratch: Scratch
    let paths: NetPaths
    let server: NetSwitchServer

    init() throws {
        scratch = try Scratch()
        let name = try NetworkName("lab")
        paths = NetPaths(root: scratch.path, name: name)
        server = try NetSwitchServer.start(name: name, paths: paths)
    }

    func client() throws -> NetSwitchClient { try NetSwitchClient.connect(paths.controlSocket) }

    func attach(_ vm: String, instance: Int = 1, mac: String? = nil, standby: Bool = false) throws -> FakeQEMU {
        let c = try client()
        defer { c.close() }
        let (reply, fd) = try c.requireOK(NetRequest(op: standby ? .standby : .attach, vm: vm, instance: instance, mac: mac))
        let descriptor = try #require(fd)
        return FakeQEMU(fd: descriptor, port: try #require(reply.port))
    }

    func request(_ request: NetRequest) throws -> NetResponse {
        let c = try client()
        defer { c.close() }
        return try c.request(request).0
    }

    func status() throws -> NetStatus { try #require(try request(NetRequest(op: .status)).status) }

    func port(_ q: FakeQEMU) throws -> NetStatus.Port { try #require(try status().ports.first { $0.port == q.port }) }

    /// Waits until `condition` holds of the status (the data path is asynchronous).
    func eventually(_ condition: (NetStatus) -> Bool) throws -> Bool {
        for _ in 0..<300 {
            if condition(try status()) { return true }
            usleep(10_000)
        }
        return false
    }

    func stop() async {
        _ = try? request(NetRequest(op: .shutdown, force: true))
        await server.waitUntilStopped()
    }
}

@Suite(.serialized) struct ServerTests {
    @Test func threePortsLearnFloodAndCount() async throws {
        let h = try Harness()
        let a = try h.attach("a", mac: "52:54:00:00:00:0a")
        let b = try h.attach("b")
        let c = try h.attach("c")
        #expect(Set([a.port, b.port, c.port]).count == 3)

        // Unknown destination: flooded to b and c, not back to a.
        let f1 = ethernet(macA, macB, tag: 1)
        try a.send(f1)
        #expect(try b.frame() == f1)
        #expect(try c.frame() == f1)
        #expect(a.silent())

        // b answers a: a is learned, so only a gets it.
        let f2 = ethernet(macB, macA, tag: 2)
        try b.send(f2)
        #expect(try a.frame() == f2)
        #expect(c.silent())

        // Broadcast from c reaches a and b.
        let f3 = ethernet(macC, broadcast, tag: 3)
        try c.send(f3)
        #expect(try a.frame() == f3)
        #expect(try b.frame() == f3)

        // a to b: learned, b only.
        let f4 = ethernet(macA, macB, tag: 4)
        try a.send(f4)
        #expect(try b.frame() == f4)
        #expect(c.silent())

        #expect(try h.eventually { $0.framesReceived == 4 && $0.forwarded == 4 })
        let pa = try h.port(a)
        #expect(pa.vm == "a" && pa.instance == 1 && pa.mac == "52:54:00:00:00:0a" && pa.state == "active")
        #expect(pa.framesIn == 2 && pa.bytesIn == 160 && pa.framesOut == 2 && pa.bytesOut == 160)
        let pb = try h.port(b)
        #expect(pb.framesIn == 1 && pb.framesOut == 3)
        let status = try h.status()
        #expect(status.macTable["52:54:00:00:00:0a"] == a.port)
        #expect(status.macTable["52:54:00:00:00:0b"] == b.port)
        await h.stop()
    }

    @Test func holdThenPromoteRedeliversUnreadFramesWholeOnceInOrderThenHeld() async throws {
        let h = try Harness()
        let a = try h.attach("a")
        let b = try h.attach("b")
        try a.send(ethernet(macA, broadcast, tag: 0))
        #expect(try b.frame() != nil)
        // Three frames to a; a's QEMU reads the first and half of the second.
        let toA = (1...3).map { ethernet(macB, macA, tag: UInt8($0), size: 100) }
        for f in toA { try b.send(f) }
        #expect(try a.frame() == toA[0])
        #expect(try a.read(exactly: 4 + 50) != nil)
        #expect(try h.eventually { s in s.ports.first { $0.port == a.port }?.framesOut == 3 })

        let a2 = try h.attach("a", instance: 2, standby: true)
        #expect(try h.port(a2).state == "standby")
        #expect(try h.request(NetRequest(op: .hold, vm: "a")).ok)
        let held = (4...5).map { ethernet(macB, macA, tag: UInt8($0), size: 90) }
        for f in held { try b.send(f) }
        #expect(try h.eventually { $0.framesReceived == 6 })
        let heldPort = try h.port(a)
        #expect(heldPort.held && heldPort.framesOut == 3)
        #expect(heldPort.framesHeld == 2)
        #expect(a2.silent())

        let reply = try h.request(NetRequest(op: .promote, vm: "a", port: a2.port))
        #expect(reply.ok, "\(reply.error ?? "")")
        #expect(reply.redelivered == 2)
        #expect(try a2.frame() == toA[1])
        #expect(try a2.frame() == toA[2])
        #expect(try a2.frame() == held[0])
        #expect(try a2.frame() == held[1])
        #expect(a2.silent())

        // After the switch-over a's MAC points at the new port; the old one is gone.
        let status = try h.status()
        #expect(status.macTable["52:54:00:00:00:0a"] == a2.port)
        #expect(status.ports.map(\.port).sorted() == [b.port, a2.port].sorted())
        // The switch-over's counts: per network (kept with the old port gone) and on New_VM's port.
        #expect(status.promotes == 1)
        #expect(status.framesHeld == 2)
        #expect(status.framesRedelivered == 2)
        #expect(status.framesCarriedOver == 2)
        #expect(status.lostAtSwitchOver == 0)
        let newPort = try #require(status.ports.first { $0.port == a2.port })
        #expect(newPort.framesRedelivered == 2 && newPort.framesCarriedOver == 2 && newPort.framesHeld == 0)
        #expect(status.ports.first { $0.port == b.port }?.framesRedelivered == 0)
        let later = ethernet(macB, macA, tag: 9)
        try b.send(later)
        #expect(try a2.frame() == later)
        await h.stop()
    }

    /// QEMU stops reading: the socket fills, NIO buffers, the switch queues
    /// (bounded) and drops. At the switch-over New_VM gets every frame Old_VM
    /// did not read and the switch did not count as dropped: in order, none twice.
    @Test func aFullSocketThenPromoteLosesOnlyCountedDrops() async throws {
        let h = try Harness()
        let a = try h.attach("a")
        let b = try h.attach("b")
        try a.send(ethernet(macA, broadcast, tag: 0))
        #expect(try b.frame() != nil)
        let count = 1500
        func numbered(_ i: Int) -> [UInt8] {
            var f = ethernet(macB, macA, tag: UInt8(truncatingIfNeeded: i), size: 1000)
            f[14] = UInt8(i >> 8)
            f[15] = UInt8(truncatingIfNeeded: i)
            return f
        }
        func number(_ f: [UInt8]) -> Int { Int(f[14]) << 8 | Int(f[15]) }
        for i in 0..<count { try b.send(numbered(i)) }
        #expect(try h.eventually { $0.framesReceived == count + 1 })
        // a's QEMU reads ten frames and part of the eleventh, then pauses.
        var seen: [Int] = []
        for _ in 0..<10 { seen.append(number(try #require(try a.frame()))) }
        #expect(try a.read(exactly: 300) != nil)
        let before = try h.port(a)
        let dropped = before.drops["queueFull"] ?? 0
        #expect(dropped > 0, "the queue bound was never reached")

        let a2 = try h.attach("a", instance: 2, standby: true)
        #expect(try h.request(NetRequest(op: .hold, vm: "a")).ok)
        let reply = try h.request(NetRequest(op: .promote, vm: "a", port: a2.port))
        #expect(reply.ok, "\(reply.error ?? "")")
        while let f = try a2.frame(timeout: 500) { seen.append(number(f)) }
        // New_VM's socket may fill too while the redelivered frames go out.
        let droppedToo = try h.port(a2).drops.values.reduce(0, +)
        #expect(seen == seen.sorted() && Set(seen).count == seen.count, "out of order or duplicated")
        #expect(seen.count + dropped + droppedToo == count, "\(seen.count) delivered + \(dropped) + \(droppedToo) dropped != \(count)")
        #expect(seen.first == 0)
        let after = try h.status()
        #expect(after.ports.allSatisfy { ($0.drops["lostAtSwitchOver"] ?? 0) == 0 })
        // Every frame New_VM got came from Old_VM's socket (redelivered) or its queue (carried over, by way of the hold).
        let newPort = try #require(after.ports.first { $0.port == a2.port })
        #expect(after.promotes == 1 && after.lostAtSwitchOver == 0)
        #expect((newPort.framesRedelivered ?? 0) + (newPort.framesCarriedOver ?? 0) == seen.count - 10 + droppedToo)
        #expect(newPort.framesCarriedOver == after.framesHeld)
        #expect(reply.redelivered == newPort.framesRedelivered)
        await h.stop()
    }

    @Test func releaseDeliversHeldFramesToTheOldPort() async throws {
        let h = try Harness()
        let a = try h.attach("a")
        let b = try h.attach("b")
        try a.send(ethernet(macA, broadcast, tag: 0))
        #expect(try b.frame() != nil)
        #expect(try h.request(NetRequest(op: .hold, vm: "a")).ok)
        let held = (1...3).map { ethernet(macB, macA, tag: UInt8($0)) }
        for f in held { try b.send(f) }
        #expect(try h.eventually { $0.framesReceived == 4 })
        #expect(a.silent())
        #expect(try h.request(NetRequest(op: .release, vm: "a")).ok)
        for f in held { #expect(try a.frame() == f) }
        await h.stop()
    }

    @Test func hostileRequestsGetClearErrorsAndTheSwitchRunsOn() async throws {
        let h = try Harness()
        let c = try h.client()
        defer { c.close() }
        let (bad, _) = try c.requestRaw(Array("this is not json\n".utf8))
        #expect(!bad.ok && bad.error?.contains("bad request") == true)
        let (unknown, _) = try c.requestRaw(Array("{\"op\":\"frobnicate\"}\n".utf8))
        #expect(!unknown.ok && unknown.error?.contains("attach") == true)
        let (path, fd) = try c.request(NetRequest(op: .attach, vm: "../etc", instance: 1))
        #expect(fd == nil)
        #expect(!path.ok && path.error?.contains("VM name '../etc'") == true)
        let (mac, _) = try c.request(NetRequest(op: .attach, vm: "a", instance: 1, mac: "zz"))
        #expect(!mac.ok && mac.error?.contains("mac") == true)
        let (noInstance, _) = try c.request(NetRequest(op: .attach, vm: "a"))
        #expect(!noInstance.ok && noInstance.error?.contains("instance") == true)
        let (promote, _) = try c.request(NetRequest(op: .promote, vm: "a", port: 7))
        #expect(!promote.ok)
        let (hold, _) = try c.request(NetRequest(op: .hold, vm: "nobody"))
        #expect(!hold.ok && hold.error?.contains("nobody") == true)

        // An oversize frame is skipped, counted, and the port keeps working.
        let a = try h.attach("a")
        let b = try h.attach("b")
        let huge = 1 << 20
        try Files.writeAll(a.fd, [0, 0x10, 0, 0] + [UInt8](repeating: 0xEE, count: huge))
        let fine = ethernet(macA, broadcast, tag: 1)
        try a.send(fine)
        #expect(try b.frame() == fine)
        #expect(try h.port(a).drops["oversize"] == 1)

        // A line too long closes that connection only.
        let long = try h.client()
        let (tooLong, _) = try long.requestRaw([UInt8](repeating: 0x41, count: NetRequest.maximumLineBytes + 10))
        #expect(!tooLong.ok && tooLong.error?.contains("longer") == true)
        long.close()

        // Still serving; shutdown is refused while ports are attached.
        #expect(try h.status().ports.count == 2)
        let refused = try h.request(NetRequest(op: .shutdown))
        #expect(!refused.ok && refused.error?.contains("attached") == true)
        await h.stop()
    }

    @Test func detachForgetsThePortAndASecondSwitchIsRefused() async throws {
        let h = try Harness()
        let a = try h.attach("a")
        _ = try h.attach("b")
        #expect(try h.request(NetRequest(op: .detach, port: a.port)).ok)
        #expect(try h.status().ports.count == 1)
        #expect(!(try h.request(NetRequest(op: .detach, port: a.port)).ok))
        #expect(throws: NetSwitchServer.Error.self) {
            _ = try NetSwitchServer.start(name: try NetworkName("lab"), paths: h.paths)
        }
        var st = stat()
        #expect(stat(h.paths.controlSocket, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(stat(h.paths.directory, &st) == 0 && st.st_mode & 0o777 == 0o700)
        await h.stop()
        #expect(!Files.exists(h.paths.controlSocket))
    }

    @Test func namesAreValidated() {
        for bad in ["", "a/b", "..", "x..y", ".hidden", "-flag", "sp ace", String(repeating: "n", count: 65)] {
            #expect(throws: NetworkName.Invalid.self) { _ = try NetworkName(bad) }
        }
        #expect((try? NetworkName("lab-1.net_2")) != nil)
    }
}
