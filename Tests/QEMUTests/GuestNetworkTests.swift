#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QEMU
import Testing
import TestSupport

/// Where scripts/build-guest put the bundled guest.
enum BundledGuestFiles {
    /// `$CEVM_GUEST_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/cevm/guest`, as scripts/build-guest.
    static var directory: String {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["CEVM_GUEST_DIR"], !dir.isEmpty { return dir }
        return "\(env["XDG_CACHE_HOME"] ?? "\(env["HOME"] ?? "/root")/.cache")/cevm/guest"
    }

    static var built: Bool {
        ["vmlinuz", "initrd.img", "guest.json"].allSatisfy { Files.exists("\(directory)/\($0)") }
    }
}

/// The bundled guest's network mode (Docs/guest.md, "Network mode") with
/// plain QEMU under TCG and none of cevm's networking: two guests joined
/// back to back by QEMU's `-netdev stream` (sender → receiver), and the echo
/// service reached from the host through user-mode networking's hostfwd.
@Suite(
    .enabled(if: haveQEMU, "qemu-system-x86_64 is not installed"),
    .enabled(if: BundledGuestFiles.built, "the bundled guest is not built (scripts/build-guest)"),
    .serialized)
struct GuestNetworkTests {
    static var guestDirectory: String { BundledGuestFiles.directory }

    /// guest.json's default command line, without the disk: these guests have none.
    static var append: String {
        let fallback = "console=ttyS0 panic=-1 quiet cevm.mem=16 cevm.pages=64 cevm.disk=4 cevm.tick=200"
        guard let data = FileManager.default.contents(atPath: "\(guestDirectory)/guest.json"),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let append = object["append"] as? String
        else { return fallback + " cevm.disk=0" }
        return append + " cevm.disk=0"
    }

    static func scratch() throws -> String {
        let dir = "/tmp/cevm-guestnet-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        return dir
    }

    /// One bundled guest under plain QEMU: 128 MiB, 1 vCPU, TCG, one
    /// virtio-net NIC on `netdev`, its serial console in `console`.
    static func boot(_ dir: String, name: String, append: String, netdev: String, mac: String) throws -> Guest {
        let console = "\(dir)/\(name).console"
        let process = try ChildProcess.spawn(
            QEMUCommandLine.defaultBinary,
            arguments: [
                "-accel", "tcg", "-machine", "q35", "-m", "128", "-smp", "1", "-nodefaults",
                "-display", "none", "-no-reboot", "-serial", "file:\(console)",
                "-kernel", "\(guestDirectory)/vmlinuz", "-initrd", "\(guestDirectory)/initrd.img",
                "-append", "\(Self.append) \(append)",
                "-netdev", "\(netdev),id=n0", "-device", "virtio-net-pci,netdev=n0,mac=\(mac)",
            ],
            stdout: .truncateFile("\(dir)/\(name).stderr"), stderr: .truncateFile("\(dir)/\(name).stderr"),
            tiedToParent: true)
        return Guest(name: name, process: process, console: console, stderr: "\(dir)/\(name).stderr")
    }

    struct Guest {
        let name: String
        let process: ChildProcess
        let console: String
        let stderr: String
        let started = ContinuousClock.now

        /// Console lines so far (QEMU writes CR LF).
        var lines: [String] {
            let text = String(decoding: FileManager.default.contents(atPath: console) ?? Data(), as: UTF8.self)
            return text.split(whereSeparator: \.isNewline).map(String.init)
        }

        /// Waits until some console line satisfies `match`; fails the test
        /// (with the console's tail and QEMU's stderr) if the guest ends or
        /// `timeout` passes first.
        @discardableResult
        func waitForLine(_ what: String, timeout: Duration, _ match: (String) -> Bool) async throws -> String? {
            let deadline = ContinuousClock.now + timeout
            while ContinuousClock.now < deadline {
                if let line = lines.first(where: match) { return line }
                if process.exitStatus != nil { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            let err = String(decoding: FileManager.default.contents(atPath: stderr) ?? Data(), as: UTF8.self)
            Issue.record(
                """
                \(name): no \(what) within \(timeout) (QEMU \(process.exitStatus.map { "\($0)" } ?? "running")); \
                console tail:
                \(lines.suffix(20).joined(separator: "\n"))
                stderr: \(err)
                """)
            return nil
        }

        func seconds(since start: ContinuousClock.Instant) -> Double {
            let d = ContinuousClock.now - start
            return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        }
    }

    /// `key=value` fields of a console line.
    static func fields(_ line: String) -> [String: String] {
        var result: [String: String] = [:]
        for word in line.split(separator: " ") {
            guard let eq = word.firstIndex(of: "=") else { continue }
            result[String(word[..<eq])] = String(word[word.index(after: eq)...])
        }
        return result
    }

    static func stop(_ guests: [Guest]) async {
        for guest in guests { await guest.process.terminate(grace: .seconds(2)) }
    }

    /// /init prints `cevm-net up` (or `cevm-net error`) before it starts the
    /// workload; a guest built before the network mode prints neither.
    static func requireNetworkUp(_ guest: Guest) async throws {
        try #require(
            await guest.waitForLine("cevm-workload start", timeout: .seconds(90)) { $0.hasPrefix("cevm-workload start ") } != nil)
        let lines = guest.lines
        try #require(
            lines.contains { $0.hasPrefix("cevm-net up ") },
            """
            \(guest.name): eth0 is not up: \(lines.filter { $0.hasPrefix("cevm-net error") }) \
            (no cevm-net line at all: a bundled guest built before its network mode; run scripts/build-guest)
            """)
    }

    @Test(.timeLimit(.minutes(5)))
    func senderStreamsToReceiverOverStreamNetdev() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = "\(dir)/net.sock"
        let wanted = 3000  // records: about 3 s at the default cevm.netrate=1000
        var guests: [Guest] = []
        do {
            let receiver = try Self.boot(
                dir, name: "recv", append: "cevm.ip=10.0.77.2/24 cevm.net=recv:9000",
                netdev: "stream,server=on,addr.type=unix,addr.path=\(socket)", mac: "52:54:00:77:00:02")
            guests.append(receiver)
            // The client's QEMU needs the listening socket when it starts.
            let listenDeadline = ContinuousClock.now + .seconds(30)
            while !Files.exists(socket) && ContinuousClock.now < listenDeadline && receiver.process.exitStatus == nil {
                try await Task.sleep(for: .milliseconds(20))
            }
            try #require(Files.exists(socket), "the receiver's QEMU made no \(socket)")
            let sender = try Self.boot(
                dir, name: "send", append: "cevm.ip=10.0.77.1/24 cevm.net=send:10.0.77.2:9000",
                netdev: "stream,server=off,addr.type=unix,addr.path=\(socket)", mac: "52:54:00:77:00:01")
            guests.append(sender)

            try await Self.requireNetworkUp(sender)
            let upSeconds = sender.seconds(since: sender.started)
            try await sender.waitForLine("first cevm-tick", timeout: .seconds(60)) { $0.hasPrefix("cevm-tick ") }
            let tickSeconds = sender.seconds(since: sender.started)
            try #require(
                await receiver.waitForLine("connection from the sender", timeout: .seconds(90)) {
                    $0.hasPrefix("cevm-net recv connected from=10.0.77.1:")
                } != nil)
            let connectedSeconds = sender.seconds(since: sender.started)
            let progress = try #require(
                await receiver.waitForLine("progress to \(wanted) records", timeout: .seconds(180)) {
                    $0.hasPrefix("cevm-net recv=") && Int(Self.fields($0)["recv"] ?? "") ?? 0 >= wanted
                })

            let recvLines = receiver.lines, sendLines = sender.lines
            // Every progress line: nothing lost, repeated, corrupted or broken.
            let progressLines = recvLines.filter { $0.hasPrefix("cevm-net recv=") }
            for line in progressLines {
                let f = Self.fields(line)
                #expect(f["gaps"] == "0" && f["dups"] == "0" && f["bad"] == "0" && f["resets"] == "0", "\(line)")
            }
            let problems = recvLines.filter {
                ["cevm-net gap ", "cevm-net dup ", "cevm-net bad ", "cevm-net reset "].contains(where: $0.hasPrefix)
            }
            #expect(problems.isEmpty, "receiver reported: \(problems)")
            #expect(!sendLines.contains { $0.hasPrefix("cevm-net send broken ") }, "the sender's connection broke")
            #expect(sendLines.contains { $0.hasPrefix("cevm-net send=") }, "the sender prints progress")
            // The tick loop goes on beside the network role, intact.
            for guest in [receiver, sender] {
                let ticks = guest.lines.filter { $0.hasPrefix("cevm-tick ") }
                #expect(ticks.count >= 3, "\(guest.name): \(ticks.count) ticks")
                #expect(ticks.allSatisfy { $0.contains(" mem=ok ") }, "\(guest.name): a tick failed")
                #expect(!guest.lines.contains { $0.hasPrefix("cevm-error") }, "\(guest.name): \(guest.lines.filter { $0.hasPrefix("cevm-error") })")
            }
            // Figures (wall clock, 2 shared cores): the guest's own rates, over the last progress lines.
            let rates = progressLines.suffix(3).compactMap { Double(Self.fields($0)["rate"] ?? "") }
            print(
                """
                guest network (TCG, stream netdev): sender eth0 up at \(String(format: "%.1f", upSeconds)) s, \
                first tick at \(String(format: "%.1f", tickSeconds)) s, receiver connected at \
                \(String(format: "%.1f", connectedSeconds)) s after the sender's QEMU started; \
                \(progress); last receiver rates \(rates) records/s (cevm.netrate=1000)
                """)
        } catch {
            await Self.stop(guests)
            throw error
        }
        await Self.stop(guests)
    }

    /// The ping role against an echo role: round trips counted, their
    /// latencies printed as figures, no bad reply or broken connection.
    @Test(.timeLimit(.minutes(5)))
    func pingMeasuresRoundTripsToAnEcho() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = "\(dir)/net.sock"
        var guests: [Guest] = []
        do {
            let echo = try Self.boot(
                dir, name: "echo", append: "cevm.ip=10.0.78.2/24 cevm.net=echo:7",
                netdev: "stream,server=on,addr.type=unix,addr.path=\(socket)", mac: "52:54:00:78:00:02")
            guests.append(echo)
            let listenDeadline = ContinuousClock.now + .seconds(30)
            while !Files.exists(socket) && ContinuousClock.now < listenDeadline && echo.process.exitStatus == nil {
                try await Task.sleep(for: .milliseconds(20))
            }
            try #require(Files.exists(socket), "the echo's QEMU made no \(socket)")
            let pinger = try Self.boot(
                dir, name: "ping", append: "cevm.ip=10.0.78.1/24 cevm.net=ping:10.0.78.2:7 cevm.netrate=100",
                netdev: "stream,server=off,addr.type=unix,addr.path=\(socket)", mac: "52:54:00:78:00:01")
            guests.append(pinger)
            let report = try #require(
                await pinger.waitForLine("200 round trips", timeout: .seconds(180)) {
                    $0.hasPrefix("cevm-net ping n=") && Int(Self.fields($0)["n"] ?? "") ?? 0 >= 200
                })
            let reports = pinger.lines.filter { $0.hasPrefix("cevm-net ping n=") }
            let measured = reports.filter { Int(Self.fields($0)["got"] ?? "") ?? 0 > 0 }
            #expect(!measured.isEmpty, "some second had round trips: \(reports)")
            for line in measured {
                let f = Self.fields(line)
                let p50 = Int(f["p50"] ?? "") ?? -1, p99 = Int(f["p99"] ?? "") ?? -1, max = Int(f["max"] ?? "") ?? -1
                #expect(p50 > 0 && p50 <= p99 && p99 <= max, "\(line)")
                #expect(f["resets"] == "0" && f["connected"] == "1", "\(line)")
            }
            #expect(!pinger.lines.contains { $0.hasPrefix("cevm-net ping bad ") || $0.hasPrefix("cevm-net ping broken ") }, "\(pinger.lines)")
            print("guest network ping (TCG, stream netdev): \(report)")
        } catch {
            await Self.stop(guests)
            throw error
        }
        await Self.stop(guests)
    }

    /// A free TCP port on 127.0.0.1 (the kernel's choice, released again).
    static func freePort() throws -> UInt16 { UInt16(try freeTCPPort()) }

    /// A blocking TCP connection to 127.0.0.1:port with 20 s send and
    /// receive timeouts, or nil.
    static func connectLocal(port: UInt16) -> Int32? {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = loopback(port: Int(port))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else {
            close(fd)
            return nil
        }
        return fd
    }

    /// Connects to 127.0.0.1:port, reads the banner line, sends `probe` and
    /// reads it back; nil when the connection closed early (hostfwd accepts
    /// before the guest does: its own refusal shows as an empty read).
    static func echoExchange(port: UInt16, probe: String) -> (banner: String, echoed: String)? {
        guard let fd = connectLocal(port: port) else { return nil }
        defer { close(fd) }
        func readLine() -> String? {
            var bytes: [UInt8] = []
            var byte: UInt8 = 0
            while bytes.count < 200 {
                guard read(fd, &byte, 1) == 1 else { return nil }
                if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
                bytes.append(byte)
            }
            return nil
        }
        guard let banner = readLine() else { return nil }
        let message = Array((probe + "\n").utf8)
        guard write(fd, message, message.count) == message.count, let echoed = readLine() else { return nil }
        return (banner, echoed)
    }

    @Test(.timeLimit(.minutes(3)))
    func echoAnswersThroughUserNetworkingHostForward() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = try Self.freePort()
        let guest = try Self.boot(
            dir, name: "echo", append: "cevm.ip=10.0.2.15/24 cevm.gw=10.0.2.2 cevm.net=echo:7",
            netdev: "user,hostfwd=tcp:127.0.0.1:\(port)-:7", mac: "52:54:00:77:00:07")
        do {
            try await Self.requireNetworkUp(guest)
            try #require(
                await guest.waitForLine("echo listening", timeout: .seconds(60)) { $0 == "cevm-net echo listening port=7" } != nil)
            try await guest.waitForLine("a tick", timeout: .seconds(60)) { $0.hasPrefix("cevm-tick ") }
            var answer: (banner: String, echoed: String)?
            let deadline = ContinuousClock.now + .seconds(60)
            while answer == nil && ContinuousClock.now < deadline {
                answer = Self.echoExchange(port: port, probe: "cevm-test \(port)")
                if answer == nil { try await Task.sleep(for: .milliseconds(500)) }
            }
            let (banner, echoed) = try #require(answer, "no answer from the guest's echo service on 127.0.0.1:\(port)")
            #expect(banner.hasPrefix("cevm-echo counter="), "\(banner)")
            let counter = Int(Self.fields(banner)["counter"] ?? "") ?? 0
            #expect(counter >= 1, "the banner carries the tick counter: \(banner)")
            let lastTick = guest.lines.last { $0.hasPrefix("cevm-tick ") }.flatMap { Int(Self.fields($0)["counter"] ?? "") } ?? 0
            #expect(counter <= lastTick + 1, "banner counter \(counter), console at \(lastTick)")
            #expect(echoed == "cevm-test \(port)")
            try await guest.waitForLine("the accepted connection", timeout: .seconds(30)) { $0.hasPrefix("cevm-net echo accepted from=10.0.2.2:") }
            try await guest.waitForLine("the closed connection", timeout: .seconds(30)) { $0.hasPrefix("cevm-net echo closed from=10.0.2.2:") }
        } catch {
            await Self.stop([guest])
            throw error
        }
        await Self.stop([guest])
    }

    // The guest's network record (Docs/guest.md, "Network mode"), written here
    // from its description to play the sender's part from the host.
    static func mix64(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    static func record(_ number: UInt64, corrupt: Bool = false) -> [UInt8] {
        var w = [UInt64](repeating: 0, count: 128)
        w[0] = 0x3143_4552_4e56_4543  // "CEVNREC1"
        w[1] = number
        w[2] = 1024
        for i in 3..<127 { w[i] = mix64((number &* 0x9e37_79b9_7f4a_7c15) ^ UInt64(i)) }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<127 { h = mix64(h ^ w[i]) &+ UInt64(i) }
        w[127] = h
        if corrupt { w[50] ^= 1 }
        return w.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var at = 0
        while at < bytes.count {
            let n = bytes[at...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return false }
            at += n
        }
        return true
    }

    /// The receiver in a real guest reports what goes wrong, one line each:
    /// the host plays a sender through hostfwd that cuts a record short and
    /// closes (a broken connection), then skips, repeats and corrupts records.
    @Test(.timeLimit(.minutes(3)))
    func receiverReportsGapsDuplicatesBadRecordsAndResets() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = try Self.freePort()
        let guest = try Self.boot(
            dir, name: "recv", append: "cevm.ip=10.0.2.15/24 cevm.gw=10.0.2.2 cevm.net=recv:9000",
            netdev: "user,hostfwd=tcp:127.0.0.1:\(port)-:9000", mac: "52:54:00:77:00:09")
        do {
            try await Self.requireNetworkUp(guest)
            try #require(
                await guest.waitForLine("recv listening", timeout: .seconds(60)) { $0 == "cevm-net recv listening port=9000" } != nil)

            // Connection 1: records 1...100 and half of 101, then closed.
            let first = try #require(Self.connectLocal(port: port))
            #expect(Self.sendAll(first, (1...100).flatMap { Self.record($0) } + Self.record(101).prefix(512)))
            close(first)
            let reset1 = try #require(
                await guest.waitForLine("the first reset", timeout: .seconds(60)) { $0.hasPrefix("cevm-net reset ") })
            #expect(Self.fields(reset1)["records"] == "100" && Self.fields(reset1)["partial"] == "512", "\(reset1)")
            #expect(Self.fields(reset1)["next"] == "101" && Self.fields(reset1)["reason"] == "eof", "\(reset1)")

            // Connection 2: 101...110, then 115, 116 (gap of 4), 105, 106 (a
            // run of two duplicates), 117 corrupted, 117, then closed.
            let second = try #require(Self.connectLocal(port: port))
            var bytes = (101...110).flatMap { Self.record($0) }
            bytes += Self.record(115) + Self.record(116) + Self.record(105) + Self.record(106)
            bytes += Self.record(117, corrupt: true) + Self.record(117)
            #expect(Self.sendAll(second, bytes))
            // An orderly end (FIN after the data), the socket kept open until
            // the guest has read it: a close with the host busy could end
            // the user-mode connection before slirp passed every byte on.
            shutdown(second, Int32(SHUT_WR))
            defer { close(second) }
            let summary = try #require(
                await guest.waitForLine("a progress line after two resets", timeout: .seconds(60)) {
                    $0.hasPrefix("cevm-net recv=") && Self.fields($0)["resets"] == "2"
                })
            let f = Self.fields(summary)
            #expect(f["recv"] == "113" && f["gaps"] == "1" && f["missing"] == "4", "\(summary)")
            #expect(f["dups"] == "2" && f["bad"] == "1" && f["next"] == "118", "\(summary)")
            let lines = guest.lines
            #expect(lines.contains("cevm-net gap expected=111 found=115 missing=4"))
            #expect(lines.contains("cevm-net dup first=105 last=106 count=2 next=117"))
            #expect(lines.contains { $0.hasPrefix("cevm-net bad from=10.0.2.2:") && $0.hasSuffix(" record=15 magic=314345524e564543 seq=117 next=117") })
            #expect(lines.filter { $0.hasPrefix("cevm-net reset ") }.count == 2)
            #expect(lines.contains { $0.hasPrefix("cevm-net reset ") && $0.hasSuffix(" records=16 partial=0 next=118 reason=eof") })
            #expect(!lines.contains { $0.hasPrefix("cevm-error") })
        } catch {
            await Self.stop([guest])
            throw error
        }
        await Self.stop([guest])
    }

    /// A listening socket on 127.0.0.1 (the kernel's port) whose accept(2)
    /// gives up after `seconds`.
    static func listenLocal(seconds: Int) throws -> (fd: Int32, port: UInt16) {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", errno: errno) }
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0 && listen(fd, 4) == 0
            }
        }
        guard ok else {
            close(fd)
            throw SystemError("listen", errno: errno)
        }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    /// accept(2) with the listener's timeout, then 20 s receive timeouts; nil on timeout.
    static func acceptOne(_ listener: Int32) -> Int32? {
        let fd = accept(listener, nil, nil)
        guard fd >= 0 else { return nil }
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var at = 0
        while at < count {
            let n = bytes[at...].withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return nil }
            at += n
        }
        return bytes
    }

    static func number(ofRecord bytes: ArraySlice<UInt8>) -> UInt64 {
        bytes.dropFirst(8).prefix(8).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    /// The sender in a real guest reports a broken connection, connects again
    /// and goes on with the first record not fully written: the host plays the
    /// receiver (the guest reaches it as user-mode networking's gateway) and
    /// resets the first connection.
    @Test(.timeLimit(.minutes(3)))
    func senderReportsABrokenConnectionAndGoesOn() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (listener, port) = try Self.listenLocal(seconds: 90)
        defer { close(listener) }
        let guest = try Self.boot(
            dir, name: "send", append: "cevm.ip=10.0.2.15/24 cevm.gw=10.0.2.2 cevm.net=send:10.0.2.2:\(port) cevm.netrate=200",
            netdev: "user", mac: "52:54:00:77:00:0a")
        do {
            // Connection 1: the first 20 records, exactly as documented; then a reset (RST).
            let first = try #require(Self.acceptOne(listener), "the guest's sender did not connect")
            let received = Self.readExactly(first, 20 * 1024)
            var hardClose = linger(l_onoff: 1, l_linger: 0)
            setsockopt(first, SOL_SOCKET, SO_LINGER, &hardClose, socklen_t(MemoryLayout<linger>.size))
            close(first)
            let records = try #require(received, "fewer than 20 records on the first connection")
            #expect(Array(records.prefix(1024)) == Self.record(1), "record 1 is not as Docs/guest.md describes it")
            let numbers: [UInt64] = (0..<20).map { (k: Int) -> UInt64 in
                let start = k * 1024
                return Self.number(ofRecord: records[start..<(start + 1024)])
            }
            #expect(numbers == Array(1...20))

            // Connection 2 starts with the first record the guest did not finish writing.
            let second = try #require(Self.acceptOne(listener), "the guest's sender did not connect again")
            defer { close(second) }
            let head = try #require(Self.readExactly(second, 1024))
            let resumed = Self.number(ofRecord: head[...])
            #expect(resumed > 20 && head == Self.record(resumed))

            let broken = try #require(
                await guest.waitForLine("the broken connection", timeout: .seconds(30)) { $0.hasPrefix("cevm-net send broken ") })
            #expect(broken.hasSuffix("error=Connection reset by peer"), "\(broken)")
            let sent = UInt64(Self.fields(broken)["sent"] ?? "") ?? 0
            #expect(sent >= 20 && sent + 1 == resumed, "\(broken), resumed at \(resumed)")
            try #require(
                await guest.waitForLine("the second connection", timeout: .seconds(30)) {
                    $0.hasPrefix("cevm-net send connected ") && $0.hasSuffix(" next=\(resumed)")
                } != nil)
            try #require(
                await guest.waitForLine("a progress line counting the reset", timeout: .seconds(30)) {
                    $0.hasPrefix("cevm-net send=") && Self.fields($0)["resets"] == "1" && Self.fields($0)["connected"] == "1"
                } != nil)
            #expect(!guest.lines.contains { $0.hasPrefix("cevm-error") })
        } catch {
            await Self.stop([guest])
            throw error
        }
        await Self.stop([guest])
    }
}
