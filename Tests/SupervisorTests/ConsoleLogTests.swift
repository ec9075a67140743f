#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Supervisor
import TestSupport
import Testing

/// The VM's console log across a live migration's switch-over.
@Suite struct ConsoleLogTests {
    func texts(_ path: String) throws -> [String] {
        try Files.readString(path).split(separator: "\n").map { ConsoleLog.parse($0).text }
    }

    /// Old_VM stopped halfway through a line (the rest was in the migrated
    /// UART); New_VM sends the rest: one whole line, not two halves.
    @Test func aLineSplitAtTheSwitchOverIsLoggedWhole() throws {
        let scratch = try Scratch()
        let log = try ConsoleLog(path: scratch.file("console.log"))
        let old = log.sink(instance: 0)
        let new = log.sink(instance: 1, continuing: 0)
        old(Array("cevm-tick counter=24 mem=ok\ncevm-tick count".utf8))
        new(Array("er=25 mem=ok\ncevm-tick counter=26 mem=ok\n".utf8))
        #expect(try texts(scratch.file("console.log")) == [
            "cevm-tick counter=24 mem=ok", "cevm-tick counter=25 mem=ok", "cevm-tick counter=26 mem=ok",
        ])
    }

    /// Without a continuation (a restore starts a new timeline), an
    /// unfinished line stays the old instance's and `finish` writes it.
    @Test func aNewTimelineDoesNotJoinTheOldOnesHalfLine() throws {
        let scratch = try Scratch()
        let log = try ConsoleLog(path: scratch.file("console.log"))
        log.sink(instance: 0)(Array("booting hal".utf8))
        log.sink(instance: 1)(Array("restored\n".utf8))
        log.finish(instance: 0)
        #expect(try texts(scratch.file("console.log")) == ["restored", "booting hal"])
    }

    func read(_ path: String, follow: (() async -> Bool)? = nil) async throws -> [String] {
        var lines: [String] = []
        try await ConsoleLogReader(path: path).read(follow: follow) { raw in
            lines.append(ConsoleLog.parse(Substring(decoding: raw, as: UTF8.self)).text)
        }
        return lines
    }

    /// The log is rotated at its size limit: two files at most, each within
    /// the limit, and the reader gives what they hold in order.
    @Test func theLogRotatesAtItsLimitKeepingOnePreviousFile() async throws {
        let scratch = try Scratch()
        let path = scratch.file("console.log")
        let log = try ConsoleLog(path: path, maximumBytes: 1000)
        let sink = log.sink(instance: 0)
        for n in 0..<200 { sink(Array("cevm-tick counter=\(n)\n".utf8)) }
        #expect(try Files.list(scratch.path) == ["console.log", "console.log.1"])
        #expect(try Files.size(path) <= 1000 && Files.size(ConsoleLog.previous(of: path)) <= 1000)
        let lines = try await read(path)
        let counters = lines.compactMap { $0.split(separator: "=").last.flatMap { Int($0) } }
        #expect(counters.count == lines.count && counters.last == 199)
        #expect(counters == Array((counters.first ?? 0)...199), "in order, none missing between the two files")
        #expect(counters.count > 1000 / 48, "more than one file's worth is kept")
        // A log reopened (the next supervisor) goes on from its size.
        let again = try ConsoleLog(path: path, maximumBytes: 1000)
        again.sink(instance: 0)(Array(String(repeating: "x", count: 600).utf8) + [0x0a])
        #expect(try Files.size(path) <= 1000)
        #expect(try await read(path).last?.count == 600)
    }

    /// Following the log across rotations: each time the reader is at the
    /// end, the writer adds a batch (which may rotate the log); the reader
    /// sees every line once, in order.
    @Test func followingCrossesRotations() async throws {
        let scratch = try Scratch()
        let path = scratch.file("console.log")
        let log = try ConsoleLog(path: path, maximumBytes: 2000)
        let sink = log.sink(instance: 0)
        var next = 0
        var rotations = 0
        var lastPrevious: Int64 = -1
        let lines = try await read(path) {
            guard next < 600 else { return false }
            for _ in 0..<30 {
                sink(Array("line \(next)\n".utf8))
                next += 1
            }
            var st = stat()
            let previous = stat(ConsoleLog.previous(of: path), &st) == 0 ? Int64(st.st_ino) : -1
            if previous != lastPrevious { rotations += 1 }
            lastPrevious = previous
            return true
        }
        #expect(rotations > 3, "the log rotated while it was followed")
        #expect(lines == (0..<600).map { "line \($0)" })
    }

    /// Memory stays bounded whatever the file holds: a megabyte without a
    /// newline comes in pieces of at most `maximumPending` bytes.
    @Test func aHugeLineIsReadInBoundedPieces() async throws {
        let scratch = try Scratch()
        let path = scratch.file("console.log")
        try Files.writeAtomically([UInt8](repeating: 0x61, count: 1 << 20) + [0x0a] + Array("end\n".utf8), to: path)
        var sizes: [Int] = []
        try await ConsoleLogReader(path: path).read { sizes.append($0.count) }
        #expect(sizes.allSatisfy { $0 <= ConsoleLogReader.maximumPending + ConsoleLogReader.chunkSize })
        #expect(sizes.reduce(0, +) == (1 << 20) + 3 && sizes.last == 3)
    }
}
