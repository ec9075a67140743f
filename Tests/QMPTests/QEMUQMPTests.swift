import Foundation
import Testing

@testable import QMP

/// `qemu-system-x86_64` found on `PATH`, or `nil`.
private let qemuPath: String? = {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
    for directory in path.split(separator: ":") {
        let candidate = "\(directory)/qemu-system-x86_64"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    print("QEMUQMPTests skipped: qemu-system-x86_64 is not on PATH")
    return nil
}()

@Suite("QMPClient against real QEMU", .timeLimit(.minutes(1)))
struct QEMUQMPTests {
    @Test(
        "query-version, query-status, unknown command, quit",
        .enabled(if: qemuPath != nil, "qemu-system-x86_64 is not on PATH"))
    func realQEMU() async throws {
        guard let qemuPath else { return }
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("qmp-qemu-\(UUID().uuidString.prefix(8))", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let socket = directory.appendingPathComponent("qmp.sock").path
        let stderrPath = directory.appendingPathComponent("stderr.log")
        _ = FileManager.default.createFile(atPath: stderrPath.path, contents: nil)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: qemuPath)
        process.arguments = [
            "-accel", "tcg", "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none", "-S",
            "-qmp", "unix:\(socket),server=on,wait=off",
        ]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: stderrPath)
        try process.run()
        defer { Self.stop(process) }

        let client = try await Self.connectWithRetries(socket: socket, process: process, stderrPath: stderrPath)
        #expect(client.greeting.major >= 1)

        let version = try await client.execute("query-version")
        #expect(version["qemu"]?["major"]?.intValue == client.greeting.major)
        #expect(version["qemu"]?["minor"]?.intValue == client.greeting.minor)
        #expect(version["package"]?.stringValue == client.greeting.package)

        let status = try await client.execute("query-status")
        #expect(status["status"]?.stringValue == "prelaunch")
        #expect(status["running"]?.boolValue == false)

        await #expect {
            try await client.execute("no-such-command")
        } throws: { error in
            guard case QMPError.commandFailed(let command, let errorClass, _) = error else { return false }
            return command == "no-such-command" && errorClass == "CommandNotFound"
        }

        let events = client.events()
        do {
            _ = try await client.execute("quit")
        } catch QMPError.disconnected {
            // QEMU may hang up before its reply to quit reaches us.
        }
        var names: [String] = []
        for await event in events { names.append(event.name) }  // finishes on disconnect
        #expect(names.contains("SHUTDOWN"))
        #expect(client.closeReason == .closedByPeer)
        await #expect(throws: QMPError.disconnected) { try await client.execute("query-status") }
        await client.close()
    }

    /// SIGTERM, then SIGKILL if QEMU has not exited within two seconds; always reaps it.
    private static func stop(_ process: Process) {
        if process.isRunning { process.terminate() }
        let deadline = Date().addingTimeInterval(2)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// QEMU creates the socket shortly after starting; retry until it accepts.
    private static func connectWithRetries(socket: String, process: Process, stderrPath: URL) async throws -> QMPClient {
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            do {
                return try await QMPClient.connect(unixSocketPath: socket, timeout: .seconds(10))
            } catch QMPError.connectionFailed where ContinuousClock.now < deadline && process.isRunning {
                try await Task.sleep(for: .milliseconds(50))
            } catch {
                let log = (try? String(contentsOf: stderrPath, encoding: .utf8)) ?? ""
                Issue.record("cannot connect to QEMU (running: \(process.isRunning)); stderr: \(log)")
                throw error
            }
        }
    }
}
