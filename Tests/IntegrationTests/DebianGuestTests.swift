#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Testing
import TestSupport

/// The Debian guest scripts/build-debian-guest makes (Docs/guest.md, "The
/// Debian guest"): systemd, PostgreSQL 15 and cevm-pg, which commits
/// numbered rows and prints each number once its commit returned.
enum DebianGuest {
    static var directory: String {
        let env = ProcessInfo.processInfo.environment
        return env["CEVM_DEBIAN_DIR"] ?? "\(env["XDG_CACHE_HOME"] ?? "\(env["HOME"] ?? "/root")/.cache")/cevm/debian"
    }

    static var built: Bool {
        ["debian.json", "debian.qcow2", "vmlinuz", "initrd.img"].allSatisfy { Files.exists("\(directory)/\($0)") }
    }

    /// The kernel command line the build recorded in debian.json.
    static func append() throws -> String {
        let object = try JSONSerialization.jsonObject(with: Data(try Files.readString("\(directory)/debian.json").utf8)) as? [String: Any]
        guard let append = object?["append"] as? String else { throw HarnessError("no append in \(directory)/debian.json") }
        return append
    }

    /// `cevm run` arguments for a VM named `name` booting the Debian guest,
    /// with a user NIC forwarding 127.0.0.1:`postgresPort` to PostgreSQL's 5432.
    static func runArguments(_ name: String, postgresPort: Int? = nil) throws -> [String] {
        [
            "run", name, "--accel", "tcg", "--memory", "512M",
            "--kernel", "\(directory)/vmlinuz", "--initrd", "\(directory)/initrd.img",
            "--append", try append(), "--disk", "\(directory)/debian.qcow2",
        ] + (postgresPort.map { ["--nic", "user,hostfwd=tcp:127.0.0.1:\($0)-:5432"] } ?? [])
    }

    /// PostgreSQL's answer to an SSLRequest (length 8, code 80877103) sent to
    /// 127.0.0.1:`port`: "N" or "S" when the server answers; otherwise what
    /// happened (slirp accepts the host's connection before the guest does,
    /// and closes it when the guest refuses).
    static func answer(port: Int) -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return "socket: errno \(errno)" }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = loopback(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else { return "connect: errno \(errno)" }
        let request: [UInt8] = [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F]
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == request.count else { return "send: errno \(errno)" }
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, 0)
        if n == 1 { return String(UnicodeScalar(byte)) }
        return n == 0 ? "closed" : "recv: errno \(errno)"
    }

    /// Waits until PostgreSQL answers through the forward; returns the last answer.
    static func waitForAnswer(_ cevm: borrowing CEVMHarness, port: Int, timeout: Double) throws -> String {
        var last = ""
        _ = try cevm.wait(timeout: timeout) {
            last = answer(port: port)
            return last == "N" || last == "S"
        }
        return last
    }
}

/// One `cevm-pg` console line, as `cevm logs` prints it: `TIME cevm-pg WHAT`.
struct PGLine {
    enum Kind: Equatable {
        case ready(recovery: String)
        case committed(Int)
        case count(count: Int, max: Int)
        case error(String)
    }
    var time: Double
    var kind: Kind

    init?(_ line: String) {
        guard let space = line.firstIndex(of: " "), let time = Timestamp.parse(String(line[..<space])),
            let marker = line.range(of: "cevm-pg ")
        else { return nil }
        self.time = time
        let rest = line[marker.upperBound...].trimmingCharacters(in: .whitespacesAndNewlines)
        let fields = rest.split(separator: " ")
        func value(_ key: String) -> String? {
            fields.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
        }
        switch fields.first {
        case "ready": kind = .ready(recovery: value("recovery") ?? "?")
        case "error": kind = .error(rest)
        case let field? where field.hasPrefix("committed="):
            guard let n = value("committed").flatMap(Int.init) else { return nil }
            kind = .committed(n)
        case let field? where field.hasPrefix("count="):
            guard let count = value("count").flatMap(Int.init), let max = value("max").flatMap(Int.init) else { return nil }
            kind = .count(count: count, max: max)
        default: return nil
        }
    }

    var committed: Int? {
        if case .committed(let n) = kind { return n }
        return nil
    }
}

/// A real distribution under cevm: PostgreSQL commits rows while the VM is
/// checkpointed the CEVM way, the VM is lost, and the restored one carries
/// on from exactly the row the checkpoint's cut had committed.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary and QEMU (make test builds them)"))
struct DebianGuestTests {
    func pgLines(_ cevm: borrowing CEVMHarness, _ name: String, after wall: Double = 0) throws -> [PGLine] {
        try cevm.consoleLines(name).compactMap(PGLine.init).filter { $0.time > wall }
    }

    @Test func postgresCommitsSurviveACEVMCheckpointKillAndRestore() throws {
        try #require(DebianGuest.built, "the Debian guest is not built in \(DebianGuest.directory): run scripts/build-debian-guest (make test's setup does)")
        let cevm = try CEVMHarness()
        let name = "pg"
        // A user NIC: the host reaches PostgreSQL through a forward.
        let pgPort = try freeTCPPort()

        // Boot; time QEMU's start to the first committed row.
        let started = Date().timeIntervalSince1970
        let run = try cevm.run(try DebianGuest.runArguments(name, postgresPort: pgPort))
        #expect(run.ok, "\(run.stderr)")
        try #require(run.ok)
        var lines: [PGLine] = []
        let booted = try cevm.wait(timeout: 180) {
            lines = try pgLines(cevm, name)
            return lines.compactMap(\.committed).count >= 8
        }
        let console = try cevm.consoleLines(name)
        try #require(booted, "fewer than 8 commits 180 s after boot; console tail:\n\(console.suffix(30).joined(separator: "\n"))")
        let firstCommit = lines.first { $0.committed != nil }?.time ?? 0
        print("debian guest: first committed row \(String(format: "%.1f", firstCommit - started)) s after `cevm run`")
        #expect(lines.first?.kind == .ready(recovery: "no"), "a fresh boot: no crash recovery (\(lines.first.map { "\($0.kind)" } ?? "none"))")
        #expect(lines.compactMap(\.committed) == Array(1...lines.compactMap(\.committed).count), "rows 1, 2, 3, … on a fresh disk")

        // The NIC got its lease, and PostgreSQL answers the host through the forward.
        var up: [String] = []
        #expect(try cevm.wait(timeout: 60) {
            up = try cevm.consoleLines(name).filter { $0.contains("cevm-net ") }
            return !up.isEmpty
        }, "no cevm-net line on the console")
        #expect(up.first?.hasSuffix("cevm-net up dev=eth0 addr=10.0.2.15/24 gw=10.0.2.2") == true, "the NIC by DHCP: \(up)")
        let answered = try DebianGuest.waitForAnswer(cevm, port: pgPort, timeout: 60)
        #expect(answered == "N" || answered == "S", "PostgreSQL through the forward before the checkpoint: \(answered)")
        print("debian guest: PostgreSQL answers through the forward \(String(format: "%.1f", Date().timeIntervalSince1970 - started)) s after `cevm run`")

        // A CEVM checkpoint (the default mechanism) while it commits.
        let checkpoint = try cevm.run(["checkpoint", name, "--json"])
        #expect(checkpoint.ok, "\(checkpoint.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(checkpoint.stdout.utf8)) as? [String: Any]
        let manifest = try #require(object?["manifest"] as? [String: Any], "checkpoint: \(checkpoint.stderr)")
        #expect(manifest["mechanism"] as? String == "cevm")
        let id = try #require(manifest["id"] as? String)
        let timings = manifest["timings"] as? [String: Any] ?? [:]
        let resumedAt = try #require(Timestamp.parse(timings["resumedAt"] as? String ?? ""), "no resumedAt in \(timings)")
        print("debian guest: checkpoint \(id): guest pause \(timings["guestPauseMs"] ?? "?") ms, request to durable \(timings["requestToDurableMs"] ?? "?") ms")

        // The cut: Old_VM's console up to it is stamped before resumedAt (the
        // guest does not run between pause and resume). A line still in the
        // guest's serial buffers at the cut is printed by New_VM, and again
        // by the record's restore, so both continue from the same number.
        var continued: [Int] = []
        _ = try cevm.wait(timeout: 60) {
            continued = try pgLines(cevm, name, after: resumedAt).compactMap(\.committed)
            return continued.count >= 5
        }
        let beforeCut = try pgLines(cevm, name).filter { $0.time < resumedAt }.compactMap(\.committed)
        let lastBeforeCut = try #require(beforeCut.last, "no commit before the checkpoint")
        #expect(beforeCut == Array(1...lastBeforeCut))
        #expect(continued.count >= 5, "New_VM commits on after the checkpoint: \(continued)")
        #expect(continued.first == lastBeforeCut + 1, "New_VM continues from the cut: last before \(lastBeforeCut), then \(continued.prefix(3))")
        // The forward moved to New_VM with the switch-over.
        let afterCheckpoint = try DebianGuest.waitForAnswer(cevm, port: pgPort, timeout: 30)
        #expect(afterCheckpoint == "N" || afterCheckpoint == "S", "PostgreSQL through New_VM's forward: \(afterCheckpoint)")

        // Lose everything of the VM: supervisor and QEMU, SIGKILL.
        let detail = try cevm.status(name)["status"] as? [String: Any]
        for key in ["qemuPID", "supervisorPID"] {
            if let pid = detail?[key] as? Int { kill(pid_t(pid), SIGKILL) }
        }
        #expect(try cevm.wait(timeout: 10) { (try cevm.status(name)["supervisorAlive"] as? Bool) == false }, "the supervisor did not end")
        #expect(cevm.waitForQEMUCount(0, timeout: 10) == 0, "a QEMU of the VM outlived its supervisor")
        let lostAt = try pgLines(cevm, name).compactMap(\.committed).last ?? 0
        #expect(lostAt > lastBeforeCut, "the lost VM had committed past the cut (\(lostAt))")

        // Restore the record: the running PostgreSQL is restored with a disk
        // consistent with its memory, so it continues with no recovery.
        let restoreStarted = Date().timeIntervalSince1970
        let restore = try cevm.run(["restore", id])
        #expect(restore.ok, "\(restore.stderr)")
        var after: [PGLine] = []
        let resumed = try cevm.wait(timeout: 90) {
            after = try pgLines(cevm, name, after: restoreStarted)
            let counts = after.filter { if case .count = $0.kind { return true } else { return false } }
            return after.compactMap(\.committed).count >= 12 && !counts.isEmpty
        }
        let tail = try cevm.consoleLines(name).suffix(40).joined(separator: "\n")
        #expect(resumed, "the restored VM did not commit on; console tail:\n\(tail)")
        let restoredCommits = after.compactMap(\.committed)
        print("debian guest: restored VM commits \(restoredCommits.prefix(5))…, first restored row \(String(format: "%.1f", (after.first?.time ?? 0) - restoreStarted)) s after `cevm restore`")
        #expect(restoredCommits.first == lastBeforeCut + 1, "no committed row lost or repeated: cut at \(lastBeforeCut), restored \(restoredCommits.prefix(3))")
        #expect(restoredCommits == Array((lastBeforeCut + 1)...(lastBeforeCut + max(restoredCommits.count, 1))), "consecutive rows after the restore")
        #expect(restoredCommits.first == continued.first, "the restore continues where New_VM did")
        // The restored instance binds the forward again; the guest kept its address.
        let afterRestore = try DebianGuest.waitForAnswer(cevm, port: pgPort, timeout: 30)
        #expect(afterRestore == "N" || afterRestore == "S", "PostgreSQL through the restored VM's forward: \(afterRestore)")
        for line in after {
            switch line.kind {
            case .ready(let recovery): #expect(recovery == "no", "PostgreSQL restarted after the restore with recovery=\(recovery)")
            case .error(let what): Issue.record("workload error after the restore: \(what)")
            case .count(let count, let max):
                #expect(count == max, "SELECT count(*), max(n): \(count) rows, max \(max): a row lost or doubled")
                #expect(max > lastBeforeCut)
            case .committed: break
            }
        }
        let restoredConsole = try cevm.consoleLines(name).filter { Timestamp.parse(String($0.prefix { $0 != " " })) ?? 0 > restoreStarted }
        let alarming = restoredConsole.filter { line in
            ["EXT4-fs error", "I/O error", "PANIC", "FATAL", "Kernel panic", "database system was not properly shut down"].contains { line.contains($0) }
        }
        #expect(alarming.isEmpty, "errors on the restored console: \(alarming)")

        // The contrast that makes `recovery=no` mean something: the same VM
        // lost without a checkpoint and booted again on its disk does crash
        // recovery, and loses no committed row (at most one was committed
        // but not yet printed when it died).
        let detail2 = try cevm.status(name)["status"] as? [String: Any]
        for key in ["qemuPID", "supervisorPID"] {
            if let pid = detail2?[key] as? Int { kill(pid_t(pid), SIGKILL) }
        }
        #expect(try cevm.wait(timeout: 10) { (try cevm.status(name)["supervisorAlive"] as? Bool) == false }, "the supervisor did not end")
        #expect(cevm.waitForQEMUCount(0, timeout: 10) == 0)
        let lastPrinted = try pgLines(cevm, name).compactMap(\.committed).last ?? 0
        let rebootStarted = Date().timeIntervalSince1970
        let reboot = try cevm.run(["run", name])
        #expect(reboot.ok, "\(reboot.stderr)")
        var rebooted: [PGLine] = []
        _ = try cevm.wait(timeout: 120) {
            rebooted = try pgLines(cevm, name, after: rebootStarted)
            return rebooted.compactMap(\.committed).count >= 10
        }
        #expect(rebooted.first?.kind == .ready(recovery: "yes"), "a crashed PostgreSQL recovers: \(rebooted.first.map { "\($0.kind)" } ?? "nothing")")
        let rebootedCommits = rebooted.compactMap(\.committed)
        let first = rebootedCommits.first ?? 0
        #expect(first == lastPrinted + 1 || first == lastPrinted + 2, "after the crash: last printed \(lastPrinted), then \(rebootedCommits.prefix(3))")
        for case .count(let count, let max) in rebooted.map(\.kind) { #expect(count == max, "after the crash: \(count) rows, max \(max)") }
        #expect(try cevm.run(["stop", name]).ok)
    }
}
