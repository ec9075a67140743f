#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation

/// Runs a short-lived tool (qemu-img) without a shell and collects its output.
public enum Tool {
    public struct Output: Sendable {
        public var status: ExitStatus
        public var stdout: String
        public var stderr: String
    }

    public static func run(_ tool: String, _ arguments: [String], timeout: Duration = .seconds(120)) async throws -> Output {
        guard Executables.find(tool) != nil else {
            if tool.hasPrefix("qemu") { throw QEMUError.qemuMissing(binary: tool) }
            throw ChildProcess.SpawnError.notFound(tool)
        }
        let scratch = NSTemporaryDirectory() + "cevm-tool-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try Files.makeDirectory(scratch)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let child = try ChildProcess.spawn(
            tool, arguments: arguments, stdout: .truncateFile("\(scratch)/out"), stderr: .truncateFile("\(scratch)/err"))
        let status: ExitStatus
        if let done = await child.wait(timeout: timeout) {
            status = done
        } else {
            status = await child.terminate(grace: .seconds(2))
        }
        let out = (try? Files.readString("\(scratch)/out")) ?? ""
        let err = (try? Files.readString("\(scratch)/err")) ?? ""
        return Output(status: status, stdout: out, stderr: err.trimmingSpaces())
    }

    /// Runs and throws `QEMUError.toolFailed` unless it exits 0.
    @discardableResult
    public static func check(_ tool: String, _ arguments: [String], timeout: Duration = .seconds(120)) async throws -> Output {
        let output = try await run(tool, arguments, timeout: timeout)
        guard output.status.succeeded else {
            throw QEMUError.toolFailed(tool: tool, arguments: arguments, status: output.status, stderr: output.stderr)
        }
        return output
    }
}

/// qemu-img, the real tool, for what cevm does not do itself yet.
public enum QEMUImg {
    public struct Info: Sendable, Decodable {
        public var format: String
        public var virtualSize: Int64
        public var backingFilename: String?

        enum CodingKeys: String, CodingKey {
            case format
            case virtualSize = "virtual-size"
            case backingFilename = "backing-filename"
        }
    }

    public static func info(_ path: String) async throws -> Info {
        let output = try await Tool.check("qemu-img", ["info", "--output=json", "-U", path])
        do { return try JSONDecoder().decode(Info.self, from: Data(output.stdout.utf8)) } catch {
            throw QEMUError.file("qemu-img info \(path): unexpected output: \(error)")
        }
    }

    /// Creates an empty qcow2 image of `size` bytes.
    public static func create(_ path: String, sizeBytes: Int64) async throws {
        try await Tool.check("qemu-img", ["create", "-q", "-f", "qcow2", path, "\(sizeBytes)"])
    }

    /// Converts `source` into a new qcow2 image at `path`.
    public static func convert(_ source: String, sourceFormat: String, to path: String) async throws {
        try await Tool.check("qemu-img", ["convert", "-q", "-f", sourceFormat, "-O", "qcow2", source, path])
    }

    /// Grows a qcow2 image to `sizeBytes`.
    public static func resize(_ path: String, sizeBytes: Int64) async throws {
        try await Tool.check("qemu-img", ["resize", "-q", "-f", "qcow2", path, "\(sizeBytes)"])
    }

    /// Creates a qcow2 overlay whose backing file is `backing` (absolute path).
    public static func createOverlay(_ path: String, backing: String, backingFormat: String) async throws {
        try await Tool.check("qemu-img", ["create", "-q", "-f", "qcow2", "-b", backing, "-F", backingFormat, path])
    }
}
