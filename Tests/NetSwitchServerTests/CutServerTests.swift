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

/// The group cut over the switch's control socket, with fake QEMUs.
@Suite(.serialized) struct CutServerTests {
    /// a and b attached, each MAC learned.
    func pair(_ h: Harness) throws -> (FakeQEMU, FakeQEMU) {
        let a = try h.attach("a")
        let b = try h.attach("b")
        try a.send(ethernet(macA, broadcast, tag: 0))
        #expect(try b.frame() != nil)
        try b.send(ethernet(macB, broadcast, tag: 0))
        #expect(try a.frame() != nil)
        return (a, b)
    }

    @Test func inPlaceCutsRecordWhatIsUnreadAndHoldPostCutFrames() async throws {
        let h = try Harness()
        let (a, b) = try pair(h)
        let coordinator = try h.client()
        _ = try coordinator.requireOK(NetRequest(op: .cutBegin, group: "g1", members: ["a", "b"]))
        // Pre-cut, unread by b when b cuts: channel state.
        let f1 = ethernet(macA, macB, tag: 1)
        try a.send(f1)
        #expect(try h.eventually { $0.ports.first { $0.vm == "b" }?.framesOut == 2 })
        _ = try coordinator.requireOK(NetRequest(op: .cutInPlace, vm: "b", group: "g1"))
        // Post-cut from b to a, which has not cut: held.
        let f2 = ethernet(macB, macA, tag: 2)
        try b.send(f2)
        #expect(try h.eventually { $0.cut?.heldFrames == 1 })
        #expect(a.silent())
        _ = try coordinator.requireOK(NetRequest(op: .cutInPlace, vm: "a", group: "g1"))
        #expect(try a.frame() == f2)
        #expect(try b.frame() == f1, "b's QEMU still reads what it left unread")
        let path = "\(h.scratch.path)/channel.bin"
        let (reply, _) = try coordinator.requireOK(NetRequest(op: .cutEnd, group: "g1", path: path))
        #expect(reply.cut?.channelFrames == 1 && reply.cut?.framesHeld == 1, "\(String(describing: reply.cut))")
        let state = try ChannelState(decoding: try Files.read(path))
        #expect(state.frames == [.init(from: "a", to: "b", bytes: f1)])
        #expect(try h.status().cut == nil)

        // A group restore's injection: the recorded frames, once, to their receiver.
        let injected = try h.request(NetRequest(op: .inject, vm: "b", path: path))
        #expect(injected.ok && injected.injected == 1)
        #expect(try b.frame() == f1)
        #expect(a.silent())
        coordinator.close()
        await h.stop()
    }

    @Test func theCutIsAbortedWhenItsCoordinatorGoes() async throws {
        let h = try Harness()
        let (a, b) = try pair(h)
        let coordinator = try h.client()
        _ = try coordinator.requireOK(NetRequest(op: .cutBegin, group: "g2", members: ["a", "b"]))
        _ = try coordinator.requireOK(NetRequest(op: .cutInPlace, vm: "a", group: "g2"))
        let f = ethernet(macA, macB, tag: 3)
        try a.send(f)
        #expect(try h.eventually { $0.cut?.heldFrames == 1 })
        #expect(b.silent())
        // A second group cannot cut the same network meanwhile.
        let other = try h.request(NetRequest(op: .cutBegin, group: "g3", members: ["a"]))
        #expect(!other.ok && (other.error ?? "").contains("g2"), "\(other.error ?? "")")
        coordinator.close()
        #expect(try h.eventually { $0.cut == nil })
        #expect(try b.frame() == f, "the held frame is released to b")
        await h.stop()
    }

    @Test func badCutRequestsAreRefusedClearly() async throws {
        let h = try Harness()
        _ = try pair(h)
        for (request, expected) in [
            (NetRequest(op: .cutBegin, group: "../x", members: ["a"]), "group name"),
            (NetRequest(op: .cutBegin, group: "g", members: []), "members"),
            (NetRequest(op: .cutBegin, group: "g", members: ["zz"]), "zz"),
            (NetRequest(op: .cutInPlace, vm: "a", group: "nope"), "nope"),
            (NetRequest(op: .cutEnd, group: "nope", path: "relative/path"), "path"),
            (NetRequest(op: .inject, vm: "a", path: "/nonexistent/channel.bin"), "inject"),
        ] {
            let reply = try h.request(request)
            #expect(!reply.ok && (reply.error ?? "").contains(expected), "\(request.op): \(reply.error ?? "ok")")
        }
        // A hostile channel file is refused with what is wrong.
        let path = "\(h.scratch.path)/bad.bin"
        try Files.writeAtomically(Array("CEVMCHAN".utf8) + [0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF], to: path)
        let reply = try h.request(NetRequest(op: .inject, vm: "a", path: path))
        #expect(!reply.ok && (reply.error ?? "").contains("frames announced"), "\(reply.error ?? "ok")")
        await h.stop()
    }
}

@Suite struct ChannelStateTests {
    let sample = ChannelState(frames: [
        .init(from: "a", to: "b", bytes: [UInt8](repeating: 7, count: 60)),
        .init(from: "b", to: "a", bytes: [UInt8](repeating: 9, count: 1514)),
    ])

    @Test func roundTrips() throws {
        #expect(try ChannelState(decoding: sample.encoded()) == sample)
        #expect(try ChannelState(decoding: ChannelState().encoded()).frames.isEmpty)
        #expect(sample.frames(to: "a") == [[UInt8](repeating: 9, count: 1514)])
    }

    @Test func everyTruncationIsRefused() {
        let bytes = sample.encoded()
        for length in 0..<bytes.count {
            #expect(throws: ChannelState.Invalid.self) { try ChannelState(decoding: Array(bytes.prefix(length))) }
        }
        #expect(throws: ChannelState.Invalid.self) { try ChannelState(decoding: bytes + [0]) }
    }

    @Test func hostileFieldsAreRefusedWithWhatIsWrong() {
        func refused(_ bytes: [UInt8], _ problem: String) {
            do {
                _ = try ChannelState(decoding: bytes)
                Issue.record("accepted: \(problem)")
            } catch { #expect(error.description.contains(problem), "\(error)") }
        }
        var good = sample.encoded()
        refused(Array("NOTCHANN".utf8) + good.dropFirst(8), "magic")
        good[11] = 2
        refused(good, "version 2")
        let header = Array("CEVMCHAN".utf8) + [0, 0, 0, 1, 0, 0, 0, 1]
        refused(header + [2] + Array("..".utf8) + [1, 0x62] + [0, 0, 0, 14] + [UInt8](repeating: 0, count: 14), "sender")
        refused(header + [1, 0x61, 1, 0x2F] + [0, 0, 0, 14] + [UInt8](repeating: 0, count: 14), "receiver")
        refused(header + [1, 0x61, 1, 0x62] + [0, 0, 0, 3] + [1, 2, 3] + [UInt8](repeating: 0, count: 11), "3 bytes")
        refused(header + [1, 0x61, 1, 0x62] + [0, 1, 0, 1] + [UInt8](repeating: 0, count: 14), "65537 bytes")
    }
}
