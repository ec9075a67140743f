#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Synchronization
import Testing

/// Runs the real `cevm` binary against a private `$CEVM_HOME`.
struct CEVMHarness: ~Copyable {
    let home: String
    let binary: String

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        var ok: Bool { status == 0 }
    }

    static var binaryPath: String {
        if let bin = ProcessInfo.processInfo.environment["CEVM_BIN"], !bin.isEmpty { return bin }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/cevm").path
    }

    static var guestBuilt: Bool {
        let env = ProcessInfo.processInfo.environment
        let dir = env["CEVM_GUEST_DIR"] ?? "\(env["XDG_CACHE_HOME"] ?? "\(env["HOME"] ?? "/root")/.cache")/cevm/guest"
        return Files.exists("\(dir)/guest.json") && Files.exists("\(dir)/vmlinuz")
    }

    static var guestDirectory: String {
        let env = ProcessInfo.processInfo.environment
        return env["CEVM_GUEST_DIR"] ?? "\(env["XDG_CACHE_HOME"] ?? "\(env["HOME"] ?? "/root")/.cache")/cevm/guest"
    }

    init() throws {
        home = "/tmp/cevm-it-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        binary = Self.binaryPath
        try Files.makeDirectory(home)
    }

    deinit {
        // Stop whatever the test left running, then remove the home.
        if let names = try? Files.list("\(home)/vms") {
            for name in names {
                if let text = try? Files.readString("\(home)/vms/\(name)/status.json"),
                    let data = text.data(using: .utf8),
                    let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
                {
                    for key in ["qemuPID", "supervisorPID"] {
                        if let pid = object[key] as? Int { kill(pid_t(pid), SIGKILL) }
                    }
                }
            }
        }
        // Any other process of this home (a New_VM orphaned by a killed supervisor).
        Self.killProcesses(mentioning: home)
        try? FileManager.default.removeItem(atPath: home)
    }

    /// SIGKILLs every process whose command line mentions `text`.
    static func killProcesses(mentioning text: String) {
        guard let entries = try? Files.list("/proc") else { return }
        for entry in entries {
            guard let pid = Int32(entry), pid != getpid(),
                let raw = try? Files.read("/proc/\(entry)/cmdline", limit: 1 << 16)
            else { continue }
            let cmdline = String(decoding: raw.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            if cmdline.contains(text) { kill(pid, SIGKILL) }
        }
    }

    /// The QEMU processes of this home: a `qemu-system-*` executable whose
    /// command line names a path under it.
    func qemuProcesses() -> [pid_t] {
        guard let entries = try? Files.list("/proc") else { return [] }
        return entries.compactMap { entry -> pid_t? in
            guard let pid = pid_t(entry), let executable = FileLock.executableName(of: pid), executable.hasPrefix("qemu-system"),
                let raw = try? Files.read("/proc/\(entry)/cmdline", limit: 1 << 16)
            else { return nil }
            return String(decoding: raw.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self).contains(home) ? pid : nil
        }
    }

    /// Waits until `condition` holds, polling every 20 ms; false when it
    /// still does not after `timeout` seconds.
    func wait(timeout: Double, for condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if try condition() { return true }
            if Date() > deadline { return false }
            usleep(20_000)
        }
    }

    /// Waits until this home has exactly `count` QEMU processes; returns the
    /// last count seen.
    @discardableResult
    func waitForQEMUCount(_ count: Int, timeout: Double = 10) -> Int {
        var seen = qemuProcesses().count
        _ = wait(timeout: timeout) {
            seen = qemuProcesses().count
            return seen == count
        }
        return seen
    }

    /// What to print when a command on VM `name` failed: its stderr and the
    /// last lines of the VM's supervisor log, where the cause is.
    func diagnose(_ result: Result, _ name: String, lines: Int = 30) -> String {
        let log = (try? Files.readString("\(home)/vms/\(name)/supervisor.log")) ?? "(no supervisor log)"
        let tail = log.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
        return "exit \(result.status): \(result.stderr)\n--- supervisor.log of \(name), last \(lines) lines ---\n\(tail)"
    }

    /// The supervisor pid of a VM from its status file.
    func supervisorPID(_ name: String) -> pid_t? {
        guard let text = try? Files.readString("\(home)/vms/\(name)/status.json"),
            let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            let pid = object["supervisorPID"] as? Int
        else { return nil }
        return pid_t(pid)
    }

    /// Starts cevm without waiting for it (its output is discarded).
    func spawn(_ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["CEVM_HOME"] = home
        process.environment = env
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    @discardableResult
    func run(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 240) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["CEVM_HOME"] = home
        for (key, value) in environment { env[key] = value }
        process.environment = env
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        // Read as we go so a chatty command cannot fill the pipe and block.
        let outData = Box<Data>(Data())
        let errData = Box<Data>(Data())
        let group = DispatchGroup()
        for (pipe, sink) in [(out, outData), (err, errData)] {
            group.enter()
            DispatchQueue.global().async {
                let data = pipe.fileHandleForReading.readDataToEndOfFile()
                sink.set(data)
                group.leave()
            }
        }
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            Issue.record("cevm \(arguments.joined(separator: " ")) timed out after \(timeout) s")
            let killAt = Date().addingTimeInterval(10)
            while process.isRunning && Date() < killAt { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        // A child that inherited the pipes could hold them open for ever:
        // a hung test must fail, not stop the whole run.
        if group.wait(timeout: .now() + 30) == .timedOut {
            Issue.record("cevm \(arguments.joined(separator: " ")): output still open 30 s after it exited")
        }
        return Result(
            status: process.terminationStatus,
            stdout: String(decoding: outData.get(), as: UTF8.self),
            stderr: String(decoding: errData.get(), as: UTF8.self))
    }

    /// `cevm status NAME --json` as a dictionary.
    func status(_ name: String) throws -> [String: Any] {
        let result = try run(["status", name, "--json"])
        guard result.ok, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
            throw HarnessError("status \(name) failed: \(result.stderr)")
        }
        return object
    }

    func consoleLines(_ name: String) throws -> [String] {
        try run(["logs", name]).stdout.split(separator: "\n").map(String.init)
    }

    /// Waits until the console shows at least `count` tick lines.
    func waitForTicks(_ name: String, count: Int, timeout: Double = 120) throws -> [Tick] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let ticks = try consoleLines(name).compactMap(Tick.init)
            if ticks.count >= count { return ticks }
            if Date() > deadline { throw HarnessError("only \(ticks.count) ticks after \(timeout) s") }
            usleep(200_000)
        }
    }
}

/// One `cevm-tick` console line, as `cevm logs` prints it.
struct Tick: Equatable {
    var time: String
    var counter: Int
    var sum: String
    var mem: String
    var disk: String

    init?(_ line: String) {
        let fields = line.split(separator: " ")
        guard fields.count == 6, fields[1] == "cevm-tick" else { return nil }
        func value(_ field: Substring, _ key: String) -> String? {
            field.hasPrefix(key + "=") ? String(field.dropFirst(key.count + 1)) : nil
        }
        guard let counter = value(fields[2], "counter").flatMap(Int.init), let sum = value(fields[3], "sum"),
            let mem = value(fields[4], "mem"), let disk = value(fields[5], "disk")
        else { return nil }
        self.time = String(fields[0])
        self.counter = counter
        self.sum = sum
        self.mem = mem
        self.disk = disk
    }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

final class Box<T: Sendable>: Sendable {
    private let value: Mutex<T>
    init(_ value: T) { self.value = Mutex(value) }
    func set(_ new: T) { value.withLock { $0 = new } }
    func get() -> T { value.withLock { $0 } }
}
