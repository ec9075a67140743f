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
        // Once the shell ignores SIGTERM (bit 15 of SigIgn), not after a guess.
        let deadline = ContinuousClock.now + .seconds(10)
        while !Self.ignores(child.pid, SIGTERM) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(Self.ignores(child.pid, SIGTERM))
        let status = await child.terminate(grace: .milliseconds(300))
        #expect(status == .signaled(SIGKILL))
    }

    /// True when `/proc/PID/status` lists `signal` as ignored.
    static func ignores(_ pid: pid_t, _ signal: Int32) -> Bool {
        guard let status = try? Files.readString("/proc/\(pid)/status"),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigIgn:") }),
            let mask = UInt64(line.dropFirst("SigIgn:".count).trimmingCharacters(in: .whitespaces), radix: 16)
        else { return false }
        return mask & (1 << UInt64(signal - 1)) != 0
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

    /// A child tied to its parent gets its standard streams and the one
    /// descriptor it inherits (as 3), nothing else of the parent's.
    @Test func aTiedChildInheritsOnlyItsStreamsAndItsLock() async throws {
        let dir = NSTemporaryDirectory() + "cevm-tied-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let lock = try #require(try FileLock.tryAcquire("\(dir)/lock"))
        let child = try ChildProcess.spawn(
            "/bin/sh", arguments: ["-c", "ls /proc/$$/fd; readlink /proc/$$/fd/3"], stdout: .truncateFile("\(dir)/out"),
            tiedToParent: true, inherit: [lock.descriptor])
        #expect(await child.wait() == .exited(0))
        let lines = try Files.readString("\(dir)/out").split(separator: "\n").map(String.init)
        #expect(lines == ["0", "1", "2", "3", "\(dir)/lock"])
    }

    /// Several inherited descriptors land on 3, 4, 5… in the order given,
    /// whatever their numbers here (one above the targets, one among them).
    @Test func aTiedChildInheritsSeveralDescriptorsInOrder() async throws {
        let dir = NSTemporaryDirectory() + "cevm-tied-many-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let lock = try #require(try FileLock.tryAcquire("\(dir)/lock"))
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        defer { pair.forEach { close($0) } }
        let high = fcntl(pair[0], F_DUPFD_CLOEXEC, 40)
        defer { close(high) }
        let file = open("\(dir)/data", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(file) }
        let child = try ChildProcess.spawn(
            "/bin/sh", arguments: ["-c", "ls /proc/$$/fd; readlink /proc/$$/fd/3; readlink /proc/$$/fd/5; echo hello >&6; echo four >&4"],
            stdout: .truncateFile("\(dir)/out"), tiedToParent: true, inherit: [lock.descriptor, high, pair[1], file])
        #expect(await child.wait() == .exited(0))
        let lines = try Files.readString("\(dir)/out").split(separator: "\n").map(String.init)
        #expect(lines.prefix(7) == ["0", "1", "2", "3", "4", "5", "6"])
        #expect(lines.count == 9)
        #expect(lines.dropFirst(7).first == "\(dir)/lock")
        #expect(lines.last?.hasPrefix("socket:") == true)
        #expect(try Files.readString("\(dir)/data") == "hello\n")
        // The child's descriptor 4 was this process's `high`, pair[0]'s duplicate: its peer reads what it wrote.
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(read(pair[1], &buffer, 16) == 5)
        #expect(buffer.prefix(5) == Array("four\n".utf8)[...])
    }

    @Test func aNegativeInheritedDescriptorIsRefused() {
        #expect(throws: ChildProcess.SpawnError.self) {
            try ChildProcess.spawn("sleep", arguments: ["1"], tiedToParent: true, inherit: [-1])
        }
    }

    /// The inherited descriptor keeps the lock held after the parent closed
    /// its own, until the child ends.
    @Test func aTiedChildHoldsAnInheritedLock() async throws {
        let path = NSTemporaryDirectory() + "cevm-tied-lock-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(path) }
        var lock = try FileLock.tryAcquire(path)
        let descriptor = try #require(lock?.descriptor)
        let child = try ChildProcess.spawn("sleep", arguments: ["30"], tiedToParent: true, inherit: [descriptor])
        lock = nil
        #expect(FileLock.isHeld(path))
        #expect(FileLock.processesHolding(path) == [child.pid])
        #expect(FileLock.executableName(of: child.pid) == "sleep")
        child.signal(SIGKILL)
        _ = await child.wait()
        #expect(!FileLock.isHeld(path))
    }

    /// Whatever this process ignores or blocks, the child starts with
    /// default dispositions and an empty mask.
    @Test func aTiedChildStartsWithDefaultSignals() async throws {
        let child = try ChildProcess.spawn("sleep", arguments: ["30"], tiedToParent: true)
        defer { child.signal(SIGKILL) }
        let status = try Files.readString("/proc/\(child.pid)/status")
        for field in ["SigBlk", "SigIgn"] {
            let line = status.split(separator: "\n").first { $0.hasPrefix(field + ":") }
            #expect(line.map { $0.hasSuffix("0000000000000000") } == true, "\(line ?? "no \(field)")")
        }
    }

    @Test func aTiedChildThatCannotExecIsAnError() throws {
        let path = NSTemporaryDirectory() + "cevm-noexec-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(path) }
        try Files.writeAtomically([0, 1, 2, 3], to: path, mode: 0o700)
        let error = #expect(throws: ChildProcess.SpawnError.self) { try ChildProcess.spawn(path, arguments: [], tiedToParent: true) }
        guard case .failed(_, let code)? = error else { return }
        #expect(code == ENOEXEC)
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

    func mode(_ path: String) -> mode_t {
        var st = stat()
        stat(path, &st)
        return st.st_mode & 0o7777
    }

    /// CEVM_HOME=$HOME must leave $HOME's mode alone: an existing directory
    /// is never chmodded; one made here gets exactly the mode asked for.
    @Test func makeDirectoryNeverChangesADirectoryItDidNotCreate() throws {
        let dir = NSTemporaryDirectory() + "cevm-mkdir-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(mkdir(dir, 0o755) == 0)
        chmod(dir, 0o751)
        #expect(try Files.makeDirectory(dir, mode: 0o700) == false)
        #expect(mode(dir) == 0o751)
        // New ones, parents included, get the mode whatever the umask (which
        // usually takes group write away).
        #expect(try Files.makeDirectory("\(dir)/a/b", mode: 0o770) == true)
        #expect(mode("\(dir)/a") == 0o770 && mode("\(dir)/a/b") == 0o770)
        #expect(mode(dir) == 0o751)
        try Files.writeAtomically(Array("x".utf8), to: "\(dir)/file")
        #expect(throws: SystemError.self) { try Files.makeDirectory("\(dir)/file", mode: 0o700) }
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
