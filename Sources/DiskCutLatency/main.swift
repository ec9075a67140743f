// Depth-1 NBD latency around a checkpoint's disk cut.
//
// In one process: a ManagedDisk served over NBD on a Unix socket
// (DiskExport + NBDServer, as `cevm disk serve` serves it), a client thread
// doing 4 KiB writes and reads at depth 1 (a blocking socket, each request
// timed from before its send to after its reply), and cuts and
// integrations run back to back on the disk. Prints the latency of the
// requests that overlap a cut's first milliseconds, that overlap an
// integration, and of the others.
//
//     disk-cut-latency DIRECTORY [CUTS] [REGION_MIB]
//
// Not a cevm command: a measurement tool, built against this package and
// against older commits (it needs only ManagedDisk, DiskExport, NBDServer).

#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import DiskManager
#if canImport(DiskExportNBD)
import DiskExportNBD
#endif
import Foundation
import NBDServer
import QCOW2
import Synchronization

struct Failure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// A blocking NBD client: fixed newstyle, NBD_OPT_EXPORT_NAME, simple
/// replies. Unchecked: made by the main task, then used by the client
/// thread alone.
final class Client: @unchecked Sendable {
    let fd: Int32
    var header = [UInt8](repeating: 0, count: 28)
    var reply = [UInt8](repeating: 0, count: 16)
    var handle: UInt64 = 0

    init(socket path: String, export: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure("socket: \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw Failure("socket path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw Failure("connect \(path): \(errno)") }
        var greeting = [UInt8](repeating: 0, count: 18)
        try receive(&greeting, 18)
        guard Array(greeting[0..<16]) == Array("NBDMAGICIHAVEOPT".utf8) else { throw Failure("not an NBD newstyle server") }
        let noZeroes = greeting[17] & 2 != 0
        try send(Self.be32(noZeroes ? 3 : 1))
        let name = Array(export.utf8)
        try send(Array("IHAVEOPT".utf8) + Self.be32(1) + Self.be32(UInt32(name.count)) + name)
        var info = [UInt8](repeating: 0, count: noZeroes ? 10 : 134)
        try receive(&info, info.count)
    }

    static func be32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }

    func send(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw in try send(raw) }
    }

    func send(_ raw: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < raw.count {
            let n = Glibc.send(fd, raw.baseAddress.map { $0 + done }, raw.count - done, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure("send: \(errno)") }
            done += n
        }
    }

    func receive(_ buffer: inout [UInt8], _ count: Int) throws {
        try buffer.withUnsafeMutableBytes { raw in
            var done = 0
            while done < count {
                let n = recv(fd, raw.baseAddress.map { $0 + done }, count - done, Int32(MSG_WAITALL))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw Failure("recv: \(errno)") }
                done += n
            }
        }
    }

    /// One request, its reply read; `data` is the payload of a write or receives a read's bytes.
    func request(write: Bool, offset: UInt64, data: inout [UInt8]) throws {
        handle &+= 1
        header.withUnsafeMutableBytes { h in
            h.storeBytes(of: UInt32(0x2560_9513).bigEndian, toByteOffset: 0, as: UInt32.self)
            h.storeBytes(of: UInt16(0).bigEndian, toByteOffset: 4, as: UInt16.self)
            h.storeBytes(of: UInt16(write ? 1 : 0).bigEndian, toByteOffset: 6, as: UInt16.self)
            h.storeBytes(of: handle, toByteOffset: 8, as: UInt64.self)
            h.storeBytes(of: offset.bigEndian, toByteOffset: 16, as: UInt64.self)
            h.storeBytes(of: UInt32(data.count).bigEndian, toByteOffset: 24, as: UInt32.self)
        }
        try send(header)
        if write { try send(data) }
        try receive(&reply, 16)
        let error = reply.withUnsafeBytes { UInt32(bigEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) }
        guard error == 0 else { throw Failure("NBD error \(error) at \(offset)") }
        if !write { try receive(&data, data.count) }
    }
}

struct Sample {
    var start: UInt64
    var end: UInt64
    var write: Bool
}

final class Results: Sendable {
    let samples = Mutex<[Sample]>([])
    let failure = Mutex<String?>(nil)
    let stop = Atomic<Bool>(false)
    let done = DispatchSemaphore(value: 0)
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.down)))]
}

func run() async throws {
    let arguments = CommandLine.arguments
    guard arguments.count >= 2 else { throw Failure("usage: disk-cut-latency DIRECTORY [CUTS] [REGION_MIB]") }
    let directory = arguments[1]
    let cuts = arguments.count > 2 ? Int(arguments[2]) ?? 40 : 40
    let region = UInt64(arguments.count > 3 ? Int(arguments[3]) ?? 16 : 16) << 20
    let size: UInt64 = 256 << 20
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    func file(_ name: String) -> String { directory + "/" + name }

    // T holds the whole region: every 4 KiB write is an overwrite of a cluster it holds.
    var path = file("t0.qcow2")
    unlink(path)
    let t = try QCOW2Image.create(path: path, virtualSize: size, clusterBits: 16)
    let chunk = [UInt8](repeating: 0xA5, count: 1 << 20)
    for offset in stride(from: 0, to: region, by: chunk.count) { try t.write(chunk, at: offset) }
    try t.flush()
    let disk = ManagedDisk(top: t)
    let server = NBDServer(configuration: .init(log: { _ in }))
    try server.addExport(name: "disk", export: DiskExport(disk: disk))
    let socketPath = file("nbd.sock")
    unlink(socketPath)
    try await server.listen(unixSocketPath: socketPath)

    let results = Results()
    let client = try Client(socket: socketPath, export: "disk")
    let thread = Thread {
        var samples: [Sample] = []
        samples.reserveCapacity(4_000_000)
        var data = [UInt8](repeating: 0x5A, count: 4096)
        var random = SystemRandomNumberGenerator()
        var write = true
        do {
            while !results.stop.load(ordering: .relaxed) {
                let offset = UInt64.random(in: 0..<region / 4096, using: &random) * 4096
                let start = now()
                try client.request(write: write, offset: offset, data: &data)
                samples.append(Sample(start: start, end: now(), write: write))
                write.toggle()
            }
        } catch {
            results.failure.withLock { $0 = "\(error)" }
        }
        results.samples.withLock { $0 = samples }
        results.done.signal()
    }
    thread.start()

    // Cuts and integrations back to back, 200 ms of plain mode between.
    var windows: [(cut: UInt64, returned: UInt64, end: UInt64)] = []
    try await Task.sleep(for: .milliseconds(500))
    for round in 1...cuts {
        let uPath = file("u\(round).qcow2"), rPath = file("r\(round).qcow2")
        unlink(uPath)
        unlink(rPath)
        let u = try QCOW2Image.create(path: uPath, virtualSize: size, clusterBits: 16)
        let record = try QCOW2Image.create(path: rPath, virtualSize: size, clusterBits: 16)
        let cut = now()
        let integration = try disk.cut(u: u, record: record, incremental: false)
        let returned = now()
        _ = try await integration.wait()
        let end = now()
        disk.settle()
        windows.append((cut, returned, end))
        unlink(path)
        unlink(rPath)
        path = uPath
        if results.failure.withLock({ $0 }) != nil { break }
        try await Task.sleep(for: .milliseconds(200))
    }
    try await Task.sleep(for: .milliseconds(200))
    results.stop.store(true, ordering: .relaxed)
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().async {
            results.done.wait()
            continuation.resume()
        }
    }
    await server.shutdown()
    try await disk.flush()
    unlink(path)
    unlink(socketPath)
    if let failure = results.failure.withLock({ $0 }) { throw Failure("client: \(failure)") }

    let samples = results.samples.withLock { $0 }
    let nearCut: UInt64 = 5_000_000
    var classes: [String: [Double]] = [:]
    // Windows are ordered; requests too: one pass.
    var w = 0
    for s in samples {
        while w < windows.count && windows[w].end < s.start { w += 1 }
        let kind = s.write ? "write" : "read"
        var where_ = "plain mode"
        if w < windows.count {
            let window = windows[w]
            if s.end >= window.cut && s.start <= window.returned + nearCut {
                where_ = "cut: first 5 ms"
            } else if s.end >= window.cut && s.start <= window.end {
                where_ = "integrating"
            }
        }
        classes["\(where_), \(kind)", default: []].append(Double(s.end - s.start) / 1000)
    }
    let cutReturn = windows.map { Double($0.returned - $0.cut) / 1000 }.sorted()
    let integrations = windows.map { Double($0.end - $0.cut) / 1e6 }.sorted()
    print("cuts: \(windows.count), region \(region >> 20) MiB in 64 KiB clusters; requests: \(samples.count); inline reads \(disk.readsServedInline), inline writes \(disk.writesServedInline)")
    print(String(format: "cut() returned after: median %.1f µs, max %.1f µs; integration: median %.1f ms", percentile(cutReturn, 0.5), cutReturn.last ?? .nan, percentile(integrations, 0.5)))
    print("class                        count   median µs   p99 µs   max µs")
    for name in classes.keys.sorted() {
        let values = (classes[name] ?? []).sorted()
        let padded = name.padding(toLength: 26, withPad: " ", startingAt: 0)
        print(padded + String(format: " %7d %11.1f %8.1f %8.1f", values.count, percentile(values, 0.5), percentile(values, 0.99), values.last ?? .nan))
    }
}

do {
    try await run()
} catch {
    FileHandle.standardError.write(Data("disk-cut-latency: \(error)\n".utf8))
    exit(1)
}
