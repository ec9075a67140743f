import CEVMSystem
import Foundation
import NetSwitchControl
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The real binary: `cevm net create / ls / status / rm`.
@Suite(.serialized) struct CLITests {
    static var binary: String {
        if let bin = ProcessInfo.processInfo.environment["CEVM_BIN"], !bin.isEmpty { return bin }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/cevm").path
    }

    func cevm(_ arguments: [String], home: String) throws -> ToolResult {
        try runTool([Self.binary] + arguments, environment: ["CEVM_HOME": home])
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: CLITests.binary)))
    func createListStatusRemove() throws {
        let scratch = try Scratch()
        let create = try cevm(["net", "create", "lab"], home: scratch.path)
        #expect(create.status == 0, "\(create.output)")
        let again = try cevm(["net", "create", "lab"], home: scratch.path)
        #expect(again.status != 0 && again.output.contains("running"))
        let ls = try cevm(["net", "ls"], home: scratch.path)
        #expect(ls.status == 0 && ls.output.contains("lab") && ls.output.contains("running"))

        let paths = NetPaths(root: scratch.path, name: try NetworkName("lab"))
        let client = try NetSwitchClient.connect(paths.controlSocket)
        let (_, fd) = try client.requireOK(NetRequest(op: .attach, vm: "vm1", instance: 1, mac: "52:54:00:00:00:01"))
        client.close()
        let status = try cevm(["net", "status", "lab"], home: scratch.path)
        #expect(status.status == 0 && status.output.contains("vm1") && status.output.contains("52:54:00:00:00:01"))
        let json = try cevm(["net", "status", "lab", "--json"], home: scratch.path)
        #expect(json.status == 0 && json.output.contains("\"framesIn\""))

        let refused = try cevm(["net", "rm", "lab"], home: scratch.path)
        #expect(refused.status != 0 && refused.output.contains("--force"))
        let removed = try cevm(["net", "rm", "lab", "--force"], home: scratch.path)
        #expect(removed.status == 0, "\(removed.output)")
        if let fd { close(fd) }
        #expect(!Files.exists(paths.directory))

        // SIGTERM stops the switch cleanly; create starts it again.
        let second = try cevm(["net", "create", "lab2"], home: scratch.path)
        #expect(second.status == 0, "\(second.output)")
        let paths2 = NetPaths(root: scratch.path, name: try NetworkName("lab2"))
        let pidText = try Files.readString(paths2.pid).trimmingCharacters(in: .whitespacesAndNewlines)
        let pid = try #require(pid_t(pidText))
        #expect(kill(pid, SIGTERM) == 0)
        var waited = 0
        while FileLock.isHeld(paths2.lock) && waited < 500 {
            usleep(10_000)
            waited += 1
        }
        #expect(!FileLock.isHeld(paths2.lock))
        #expect(!Files.exists(paths2.controlSocket) && !Files.exists(paths2.pid))
        let stopped = try cevm(["net", "ls"], home: scratch.path)
        #expect(stopped.output.contains("stopped"))
        #expect(try cevm(["net", "create", "lab2"], home: scratch.path).status == 0)
        #expect(try cevm(["net", "rm", "lab2"], home: scratch.path).status == 0)

        let bad = try cevm(["net", "create", "../evil"], home: scratch.path)
        #expect(bad.status != 0 && bad.output.contains("network name"))
        let missing = try cevm(["net", "status", "nope"], home: scratch.path)
        #expect(missing.status != 0 && missing.output.contains("no network"))
    }
}
