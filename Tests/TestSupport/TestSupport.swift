import Foundation
import Testing

/// Helpers shared by the test targets: scratch directories, external tools
/// (qemu-img, qemu-io) as oracles, seeded randomness.

/// A scratch directory removed at deinit.
public final class Scratch {
    public let path: String
    public init() throws {
        let template = NSTemporaryDirectory() + "cevmtests.XXXXXX"
        var bytes = Array(template.utf8CString)
        guard let made = mkdtemp(&bytes) else { throw ToolFailure(command: "mkdtemp", status: errno, output: template) }
        path = String(cString: made)
    }
    public func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

public struct ToolFailure: Error, CustomStringConvertible {
    public let command: String
    public let status: Int32
    public let output: String
    public init(command: String, status: Int32, output: String) {
        self.command = command
        self.status = status
        self.output = output
    }
    public var description: String { "\(command) exited \(status): \(output)" }
}

public struct ToolResult {
    public let status: Int32
    public let output: String
}

/// Runs a tool and returns its status and combined output.
@discardableResult
public func runTool(_ arguments: [String], environment: [String: String] = [:]) throws -> ToolResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    process.environment = env
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return ToolResult(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
}

/// Runs a tool that must succeed.
@discardableResult
public func must(_ arguments: [String]) throws -> String {
    let result = try runTool(arguments)
    guard result.status == 0 else { throw ToolFailure(command: arguments.joined(separator: " "), status: result.status, output: result.output) }
    return result.output
}

/// `qemu-img check`: 0 clean, 3 leaks only, 2 corruption (qemu-img(1)).
public func qemuCheck(_ path: String) throws -> ToolResult {
    try runTool(["qemu-img", "check", "-f", "qcow2", path])
}

public func expectClean(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let result = try qemuCheck(path)
    #expect(result.status == 0, "qemu-img check \(path): \(result.output)", sourceLocation: sourceLocation)
}

/// After a simulated crash: no corruption (qemu-img check exit 2) and no
/// other error; leaked clusters (exit 3: allocated, referenced by nothing)
/// are allowed, since the engine writes a new cluster's refcount before the
/// table that points to it, so a crash between the two leaks it by design.
public func expectCrashConsistent(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let result = try qemuCheck(path)
    let onlyLeaks = result.status == 3 && result.output.contains("leaked clusters were found") && !result.output.contains("ERROR")
    #expect(result.status == 0 || onlyLeaks, "qemu-img check \(path): \(result.output)", sourceLocation: sourceLocation)
}

/// `qemu-img compare` of a raw file holding the expected guest content
/// against an image (through its chain).
public func expectSameContent(expected raw: String, image: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let result = try runTool(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, image])
    #expect(result.status == 0, "qemu-img compare: \(result.output)", sourceLocation: sourceLocation)
}

public func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

public func readFile(_ path: String) throws -> [UInt8] {
    Array(try Data(contentsOf: URL(fileURLWithPath: path)))
}

/// A small seeded generator (SplitMix64) so every random test is replayable.
public struct SeededRandom: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

public func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7 &+ 1) ^ seed }
}
