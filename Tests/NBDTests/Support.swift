import CEVMSystem
import Foundation
import NBDProtocol
import NBDServer
import NIOCore
import NIOPosix
import QCOW2
import Synchronization
import Testing

/// A scratch directory removed at deinit. Paths are kept short: a Unix
/// socket path must fit in 108 bytes.
final class Scratch: Sendable {
    let path: String

    init() throws {
        var template = Array("/tmp/nbdt.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw TestFailure("mkdtemp: errno \(errno)") }
        path = String(cString: made)
    }

    func file(_ name: String) -> String { path + "/" + name }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// MARK: External tools

struct ToolResult {
    let status: CEVMSystem.ExitStatus
    let output: String
}

/// Runs a tool (never through a shell) with a deadline; stdout and stderr
/// are collected through files in `scratch`.
func runTool(_ arguments: [String], in scratch: Scratch, timeout: Duration = .seconds(60)) async throws -> ToolResult {
    guard let tool = arguments.first else { throw TestFailure("no tool") }
    let tag = UInt32.random(in: 0...UInt32.max)
    let out = scratch.file("out.\(tag)")
    let err = scratch.file("err.\(tag)")
    let child = try ChildProcess.spawn(
        tool, arguments: Array(arguments.dropFirst()), stdout: .truncateFile(out), stderr: .truncateFile(err))
    var status = await child.wait(timeout: timeout)
    if status == nil { status = await child.terminate(grace: .seconds(1)) }
    let output = ((try? Files.readString(out)) ?? "") + ((try? Files.readString(err)) ?? "")
    unlink(out)
    unlink(err)
    return ToolResult(status: status ?? .exited(-1), output: output)
}

/// Runs a tool that must succeed; returns its output.
@discardableResult
func must(_ arguments: [String], in scratch: Scratch, timeout: Duration = .seconds(60)) async throws -> String {
    let result = try await runTool(arguments, in: scratch, timeout: timeout)
    guard result.status.succeeded else {
        throw TestFailure("\(arguments.joined(separator: " ")) \(result.status): \(result.output)")
    }
    return result.output
}

func nbdURI(_ export: String, socket: String) -> String { "nbd+unix:///\(export)?socket=\(socket)" }

func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

func readFile(_ path: String) throws -> [UInt8] {
    Array(try Data(contentsOf: URL(fileURLWithPath: path)))
}

func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7 &+ 1) ^ seed }
}

// MARK: Servers

/// Collects log records, for assertions on what the server said.
final class LogRecorder: Sendable {
    private let records = Mutex<[NBDLogRecord]>([])

    /// Records everything; with NBD_TEST_LOG set, also prints it.
    var handler: @Sendable (NBDLogRecord) -> Void {
        let echo = ProcessInfo.processInfo.environment["NBD_TEST_LOG"] != nil
        return { record in
            if echo { print(record) }
            self.records.withLock { $0.append(record) }
        }
    }

    var all: [NBDLogRecord] { records.withLock { $0 } }

    func contains(_ level: NBDLogRecord.Level, _ text: String) -> Bool {
        all.contains { $0.level == level && $0.message.contains(text) }
    }
}

/// A server listening on a socket in a fresh scratch directory.
struct TestServer {
    let server: NBDServer
    let scratch: Scratch
    let socket: String
    let log: LogRecorder

    static func start(
        _ exports: [(String, any NBDExport)] = [],
        configure: (inout NBDServer.Configuration) -> Void = { _ in }
    ) async throws -> TestServer {
        let scratch = try Scratch()
        let log = LogRecorder()
        var configuration = NBDServer.Configuration(log: log.handler)
        configure(&configuration)
        let server = NBDServer(configuration: configuration)
        for (name, export) in exports { try server.addExport(name: name, export: export) }
        let socket = scratch.file("nbd.sock")
        try await server.listen(unixSocketPath: socket)
        return TestServer(server: server, scratch: scratch, socket: socket, log: log)
    }
}

/// An export held in memory, with hooks to observe and delay calls.
final class MemoryExport: NBDExport {
    let size: UInt64
    let capabilities: NBDExportCapabilities
    private let bytes: Mutex<[UInt8]>
    private let stats = Mutex<(running: Int, maxRunning: Int, events: [String])>((0, 0, []))
    /// Called (and awaited) at the start of every call, with its name and offset.
    let gate: (@Sendable (String, UInt64) async -> Void)?

    init(
        size: Int, capabilities: NBDExportCapabilities = .writable, content: [UInt8]? = nil,
        gate: (@Sendable (String, UInt64) async -> Void)? = nil
    ) {
        self.size = UInt64(size)
        self.capabilities = capabilities
        self.bytes = Mutex(content ?? [UInt8](repeating: 0, count: size))
        self.gate = gate
    }

    var content: [UInt8] { bytes.withLock { $0 } }
    var maximumConcurrency: Int { stats.withLock { $0.maxRunning } }
    /// "read@offset", "write@offset", "flush", ... in order of completion.
    var events: [String] { stats.withLock { $0.events } }

    private func call<T>(_ name: String, _ offset: UInt64, _ body: () -> T) async -> T {
        stats.withLock { s in
            s.running += 1
            s.maxRunning = max(s.maxRunning, s.running)
        }
        await gate?(name, offset)
        let result = body()
        stats.withLock { s in
            s.running -= 1
            s.events.append(name == "flush" ? name : "\(name)@\(offset)")
        }
        return result
    }

    func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator) async throws(NBDIOError) -> ByteBuffer {
        await call("read", offset) {
            bytes.withLock { ByteBuffer(bytes: $0[Int(offset)..<(Int(offset) + length)]) }
        }
    }

    func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(NBDIOError) {
        await call("write", offset) {
            bytes.withLock { $0.replaceSubrange(Int(offset)..<(Int(offset) + data.readableBytes), with: data.readableBytesView) }
        }
    }

    func flush() async throws(NBDIOError) {
        await call("flush", 0) {}
    }

    func trim(offset: UInt64, length: Int, fua: Bool) async throws(NBDIOError) {
        await call("trim", offset) {}
    }

    func writeZeroes(offset: UInt64, length: Int, fua: Bool, mayTrim: Bool) async throws(NBDIOError) {
        await call("zero", offset) {
            bytes.withLock { $0.replaceSubrange(Int(offset)..<(Int(offset) + length), with: repeatElement(0, count: length)) }
        }
    }
}

/// A latch tasks wait on until the test opens it.
final class Latch: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let open = state.withLock { s in
                if s.open { return true }
                s.waiters.append(continuation)
                return false
            }
            if open { continuation.resume() }
        }
    }

    var waiting: Int { state.withLock { $0.waiters.count } }

    func open() {
        let waiters = state.withLock { s in
            s.open = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}

// MARK: qcow2

/// A qcow2 image as a block device for `BlockingExport`.
struct QCOW2Device: NBDBlockDevice {
    let image: QCOW2Image

    var size: UInt64 { image.virtualSize }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try image.read(into: buffer, at: offset)
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try image.write(buffer, at: offset)
    }

    func flush() throws { try image.flush() }

    func discard(at offset: UInt64, count: UInt64) throws {
        try image.discard(at: offset, count: count)
    }

    func writeZeroes(at offset: UInt64, count: UInt64, mayDeallocate: Bool) throws {
        try image.writeZeroes(at: offset, count: count)
    }
}
