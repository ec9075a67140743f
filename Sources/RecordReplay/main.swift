// The version 2 page recorder on its own: a recorded QEMU migration stream
// (a version 1 record's `memory.mig`) turned into a version 2 memory record
// in a scratch directory, stage by stage, beside the write bandwidth of the
// same directory measured in the same run.
//
//     record-replay STREAM SCRATCH [REPEAT]
//
// Stages, each timed from the stream in the page cache:
//   read     the stream read, nothing done with it;
//   parse    parsed, the pages dropped;
//   digest   parsed, every page's digest computed;
//   record   the whole recorder (PageRecorder: image, digests, every file
//            hashed and made durable);
//   following  the stream handed to a FollowingPageRecorder as fast as it
//            is read, then the time from its end to durable.
// Then "bound": 1.2 × the record's memory bytes / the write bandwidth, the
// target of Docs/benchmarks.md ("Record formats").
//
// Not a cevm command: a measurement tool built against this package.

#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Crypto
import Foundation
import MigrationStream
import Records

struct Failure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = Timestamp.monotonic()
    try body()
    return Timestamp.monotonic() - start
}

func replay(_ path: String, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw Failure("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = try Files.readSome(fd, into: &buffer, subject: path)
        if n == 0 { return }
        try buffer.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }
}

struct Drop: MigrationStreamSink {
    var pages = 0
    mutating func verbatim(_ bytes: UnsafeRawBufferPointer, region: MigrationStream.Region) {}
    mutating func blocks(_ blocks: [MigrationStream.Block]) {}
    mutating func page(block: Int, offset: UInt64, content: MigrationStream.PageContent) { pages += 1 }
}

struct Digest: MigrationStreamSink {
    var pages = 0
    var xor: UInt8 = 0
    mutating func verbatim(_ bytes: UnsafeRawBufferPointer, region: MigrationStream.Region) {}
    mutating func blocks(_ blocks: [MigrationStream.Block]) {}
    mutating func page(block: Int, offset: UInt64, content: MigrationStream.PageContent) {
        pages += 1
        if case .data(let bytes) = content { xor ^= SHA256.hash(data: bytes).first(where: { _ in true }) ?? 0 }
    }
}

let arguments = CommandLine.arguments
guard arguments.count >= 3 else {
    FileHandle.standardError.write(Data("usage: record-replay STREAM SCRATCH [REPEAT]\n".utf8))
    exit(2)
}
let stream = arguments[1], scratch = arguments[2]
let repeats = arguments.count > 3 ? Int(arguments[3]) ?? 1 : 1
do {
    let streamBytes = try Files.size(stream)
    func mb(_ bytes: Int64, _ s: Double) -> String { String(format: "%.0f MB/s", Double(bytes) / s / 1e6) }
    for round in 1...repeats {
        try replay(stream) { _ in }  // into the page cache
        let read = try seconds { try replay(stream) { _ in } }
        var drop = Drop()
        let parse = try seconds {
            var parser = MigrationStreamParser()
            try replay(stream) { try parser.consume($0, into: &drop) }
            try parser.finish()
        }
        var digest = Digest()
        let hash = try seconds {
            var parser = MigrationStreamParser()
            try replay(stream) { try parser.consume($0, into: &digest) }
            try parser.finish()
        }
        let directory = "\(scratch)/replay-\(getpid())-\(round)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var recordBytes: Int64 = 0
        var stages: [(String, Double)] = []
        let record = try seconds {
            let recorder = try PageRecorder(directory: directory, parent: nil)
            let fed = try seconds { try replay(stream) { try recorder.write($0) } }
            let start = Timestamp.monotonic()
            let (files, _) = try recorder.finish()
            stages = [("fed", fed), ("finish", Timestamp.monotonic() - start)]
            recordBytes = files.reduce(0) { $0 + $1.size }
        }
        // As a stop-and-save's sink takes it: spooled, a parser following.
        let followDirectory = "\(scratch)/follow-\(getpid())-\(round)"
        try FileManager.default.createDirectory(atPath: followDirectory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: followDirectory) }
        var spooled = 0.0, afterStream = 0.0
        let following = try FollowingPageRecorder(directory: followDirectory, parent: nil)
        spooled = try seconds { try replay(stream) { try following.write($0) } }
        afterStream = try seconds { _ = try following.finish() }
        let spilled = following.spooledBytes
        let bandwidth = try WriteBandwidth.measure(directory: scratch, bytes: max(recordBytes, 64 << 20))
        let bound = 1.2 * Double(recordBytes) / bandwidth
        print(String(format: "round %d: stream %.1f MiB, %d pages; record %.1f MiB", round, Double(streamBytes) / 1048576, drop.pages, Double(recordBytes) / 1048576))
        print(String(format: "  read %.3f s (%@), parse %.3f s (%@), digest %.3f s (%@)", read, mb(streamBytes, read), parse, mb(streamBytes, parse), hash, mb(streamBytes, hash)))
        print(String(format: "  record %.3f s (%@): ", record, mb(streamBytes, record)) + stages.map { String(format: "%@ %.3f s", $0.0, $0.1) }.joined(separator: ", "))
        print(String(format: "  following: stream spooled in %.3f s (%@), then %.3f s to durable (%.2f × the bound); %.1f MiB went through the spool file", spooled, mb(streamBytes, spooled), afterStream, afterStream / bound, Double(spilled) / 1048576))
        print(String(format: "  write bandwidth %.0f MB/s; bound 1.2 × record / bandwidth = %.3f s; record / bound = %.2f", bandwidth / 1e6, bound, record / bound))
    }
} catch {
    FileHandle.standardError.write(Data("record-replay: \(error)\n".utf8))
    exit(1)
}
