#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Testing

@Suite struct ChildProcessTests {
    @Test func exitStatusIsKept() async throws {
        let child = try ChildProcess.spawn("/bin/sh", arguments: ["-c", "exit 3"])
        #expect(await child.wait() == .exited(3))
        #expect(child.exitStatus == .exited(3))
    }

    @Test func argumentsAreNotParsedByAShell() async throws {
        let dir = NSTemporaryDirectory() + "cevm-spawn-\(getpid())"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = "\(dir)/out"
        let tricky = "a b; echo pwned $(id) `x` > /dev/null"
        let child = try ChildProcess.spawn("printf", arguments: ["%s", tricky], stdout: .truncateFile(out))
        #expect(await child.wait() == .exited(0))
        #expect(try Files.readString(out) == tricky)
    }

    @Test func terminateEscalatesToSIGKILL() async throws {
        // A shell that ignores SIGTERM must still end, by SIGKILL.
        let child = try ChildProcess.spawn("/bin/sh", arguments: ["-c", "trap '' TERM; while :; do sleep 0.05; done"])
        try await Task.sleep(for: .milliseconds(200))
        let status = await child.terminate(grace: .milliseconds(300))
        #expect(status == .signaled(SIGKILL))
    }

    @Test func terminateEndsWithSIGTERMWhenHeeded() async throws {
        let child = try ChildProcess.spawn("sleep", arguments: ["30"])
        #expect(await child.terminate(grace: .seconds(5)) == .signaled(SIGTERM))
        // Idempotent.
        #expect(await child.terminate() == .signaled(SIGTERM))
    }

    @Test func missingExecutableIsNamed() {
        #expect(throws: ChildProcess.SpawnError.self) {
            try ChildProcess.spawn("cevm-no-such-tool", arguments: [])
        }
    }

    @Test func newSessionDetaches() async throws {
        let child = try ChildProcess.spawn("sleep", arguments: ["5"], newSession: true)
        defer { child.signal(SIGKILL) }
        #expect(getsid(child.pid) == child.pid)
    }
}

@Suite struct AffinityTests {
    @Test func pinsEveryThreadOfAProcess() async throws {
        let available = try Affinity.available()
        guard let first = available.cpus.first else { return }
        let child = try ChildProcess.spawn("sleep", arguments: ["10"])
        defer { child.signal(SIGKILL) }
        let pinned = try Affinity.pin(process: child.pid, to: CPUSet([first]))
        #expect(!pinned.isEmpty)
        let lists = try Affinity.allowedLists(of: child.pid)
        #expect(!lists.isEmpty)
        for (_, list) in lists { #expect(list == "\(first)") }
        #expect(try Affinity.get(thread: child.pid) == CPUSet([first]))
    }
}

@Suite struct FilesTests {
    @Test func atomicWriteReplacesAndLeavesNoTemporary() throws {
        let dir = NSTemporaryDirectory() + "cevm-files-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Files.writeAtomically(Array("one".utf8), to: "\(dir)/f")
        try Files.writeAtomically(Array("two".utf8), to: "\(dir)/f")
        #expect(try Files.readString("\(dir)/f") == "two")
        #expect(try Files.list(dir) == ["f"])
    }

    @Test func readIsBounded() throws {
        let dir = NSTemporaryDirectory() + "cevm-files-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Files.writeAtomically([UInt8](repeating: 1, count: 100_000), to: "\(dir)/big")
        #expect(throws: SystemError.self) { try Files.read("\(dir)/big", limit: 1000) }
    }

    @Test func lockIsExclusive() throws {
        let path = NSTemporaryDirectory() + "cevm-lock-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(path) }
        let first = try FileLock.tryAcquire(path)
        #expect(first != nil)
        #expect(FileLock.isHeld(path))
        #expect(try FileLock.tryAcquire(path) == nil)
        withExtendedLifetime(first) {}
    }

    @Test func timestampsRoundTrip() throws {
        let text = Timestamp.format(seconds: 1_795_000_000, microseconds: 42)
        #expect(text == "2026-11-18T11:06:40.000042Z")
        #expect(Timestamp.parse(text) == 1_795_000_000.000042)
        #expect(Timestamp.parse("2026-11-18 11:06:40") == nil)
    }
}
