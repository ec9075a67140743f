#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Testing
import TestSupport

/// VMs with networks end to end, on the bundled guest's network mode
/// (Docs/guest.md): two guests on a cevm network stream checked records
/// over TCP through every kind of checkpoint of either end, and the switch
/// counts every frame it received as delivered; a guest on a user NIC
/// answers through its host forward before and after a CEVM checkpoint.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct NetworkCheckpointTests {
    func progress(_ cevm: borrowing CEVMHarness, _ name: String) throws -> [String: Int]? { try streamProgress(cevm, name) }

    func netStatus(_ cevm: borrowing CEVMHarness, _ net: String) throws -> [String: Any] { try networkStatus(cevm, net) }

    @Test func aStreamBetweenTwoGuestsSurvivesEveryCheckpointOfEitherEnd() throws {
        let cevm = try CEVMHarness()
        let created = try cevm.run(["net", "create", "lab"])
        #expect(created.ok, "\(created.stderr)")
        let rx = try cevm.run([
            "run", "rx", "--accel", "tcg", "--nic", "net=lab", "--append", "cevm.ip=10.9.0.1/24 cevm.net=recv:5000",
        ])
        #expect(rx.ok, "\(rx.stderr)")
        let tx = try cevm.run([
            "run", "tx", "--accel", "tcg", "--nic", "net=lab", "--append",
            "cevm.ip=10.9.0.2/24 cevm.net=send:10.9.0.1:5000 cevm.netrate=200",
        ])
        #expect(tx.ok, "\(tx.stderr)")
        #expect(try cevm.wait(timeout: 120) { (try progress(cevm, "rx")?["recv"] ?? 0) > 200 }, "the stream starts")

        let steps: [(String, [String])] = [
            ("rx", ["--mechanism", "cevm"]), ("tx", ["--mechanism", "cevm"]),
            ("rx", ["--mechanism", "cevm", "--policy", "dedicated"]), ("tx", ["--mechanism", "cevm", "--policy", "alternate"]),
            ("rx", ["--mechanism", "stop-and-save"]), ("tx", ["--mechanism", "stop-and-save"]),
            ("rx", ["--mechanism", "background-snapshot"]), ("tx", ["--mechanism", "background-snapshot"]),
        ]
        for (vm, options) in steps {
            let before = try progress(cevm, "rx")?["recv"] ?? 0
            let taken = try cevm.run(["checkpoint", vm] + options)
            #expect(taken.ok, "checkpoint \(vm) \(options): \(taken.stderr)")
            // The stream goes on: the receiver counts past where it was.
            #expect(
                try cevm.wait(timeout: 60) { (try progress(cevm, "rx")?["recv"] ?? 0) > before + 200 },
                "the stream goes on after checkpoint \(vm) \(options)")
        }
        let last = try #require(try progress(cevm, "rx"))
        for counter in ["gaps", "dups", "bad", "resets"] {
            #expect(last[counter] == 0, "receiver: \(counter) = \(last[counter] ?? -1)")
        }
        let broken = try cevm.consoleLines("tx").filter { $0.contains("send broken") || $0.contains("connect-failed") }
        #expect(broken.isEmpty, "the sender's connection never broke: \(broken)")

        // Every frame the switch received was delivered: none dropped.
        let status = try netStatus(cevm, "lab")
        let received = status["framesReceived"] as? Int ?? -1
        #expect(received > 0)
        let ports = status["ports"] as? [[String: Any]] ?? []
        #expect(Set(ports.compactMap { $0["vm"] as? String }) == ["rx", "tx"], "one port per VM after the checkpoints: \(ports)")
        for port in ports {
            let drops = (port["drops"] as? [String: Int] ?? [:]).values.reduce(0, +)
            #expect(drops == 0, "port \(port["port"] ?? "?") dropped \(port["drops"] ?? [:])")
        }
        let text = try cevm.run(["net", "status", "lab"]).stdout
        #expect(text.contains("0 dropped"), "\(text)")
        // Four CEVM checkpoints were four switch-overs, none lost an unread frame.
        #expect(status["promotes"] as? Int == 4, "promotes: \(status["promotes"] ?? "none")")
        #expect(status["lostAtSwitchOver"] as? Int == 0)
        #expect(text.contains("switch-overs: 4;"), "\(text)")

        #expect(try cevm.run(["stop", "tx"]).ok)
        #expect(try cevm.run(["stop", "rx"]).ok)
        #expect(try cevm.wait(timeout: 10) { (try netStatus(cevm, "lab")["ports"] as? [Any])?.isEmpty == true }, "stopped VMs leave the network")
        #expect(try cevm.run(["net", "rm", "lab"]).ok)
    }

    @Test func aGuestOnAUserNICAnswersThroughItsForwardBeforeAndAfterACheckpoint() throws {
        let cevm = try CEVMHarness()
        let port = try freeTCPPort()
        let run = try cevm.run([
            "run", "echo", "--accel", "tcg", "--nic", "user,hostfwd=tcp:127.0.0.1:\(port)-:7",
            "--append", "cevm.ip=10.0.2.15/24 cevm.gw=10.0.2.2 cevm.net=echo:7",
        ])
        #expect(run.ok, "\(run.stderr)")
        _ = try cevm.waitForTicks("echo", count: 3)
        var banner = ""
        #expect(try cevm.wait(timeout: 60) {
            banner = echoBanner(port: port) ?? ""
            return banner.hasPrefix("cevm-echo counter=")
        }, "the guest answers through the forward: '\(banner)'")
        #expect(try cevm.run(["checkpoint", "echo", "--mechanism", "cevm"]).ok)
        var after = ""
        #expect(try cevm.wait(timeout: 30) {
            after = echoBanner(port: port) ?? ""
            return after.hasPrefix("cevm-echo counter=") && after != banner
        }, "and through New_VM's forward after the checkpoint: '\(after)'")
        #expect(try cevm.run(["stop", "echo"]).ok)
    }
}

/// The first line the guest's echo service sends on a new connection to
/// 127.0.0.1:`port`, or nil.
/// The receiver's last progress line, as numbers (recv, gaps, dups, bad, resets).
func streamProgress(_ cevm: borrowing CEVMHarness, _ name: String) throws -> [String: Int]? {
    guard let line = try cevm.consoleLines(name).last(where: { $0.contains("cevm-net recv=") }) else { return nil }
    var values: [String: Int] = [:]
    for field in line.split(separator: " ") {
        let parts = field.split(separator: "=", maxSplits: 1)
        if parts.count == 2, let value = Int(parts[1]) { values[String(parts[0])] = value }
    }
    return values
}

/// `cevm net status NET --json`, parsed.
func networkStatus(_ cevm: borrowing CEVMHarness, _ net: String) throws -> [String: Any] {
    let result = try cevm.run(["net", "status", net, "--json"])
    guard result.ok, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
        throw HarnessError("net status \(net): \(result.stderr)")
    }
    return object
}

func echoBanner(port: Int) -> String? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 3, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = loopback(port: port)
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard connected else { return nil }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 256)
    while !bytes.contains(UInt8(ascii: "\n")) && bytes.count < 4096 {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    guard let end = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
    return String(decoding: bytes[..<end], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}
