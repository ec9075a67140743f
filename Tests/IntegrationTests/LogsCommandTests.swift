#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Testing

/// `cevm logs` reads the rotated console log (`console.log.1`, then
/// `console.log`) in order, and in constant memory however large it is.
@Suite(.enabled(if: Files.exists(CEVMHarness.binaryPath), "needs the cevm binary"))
struct LogsCommandTests {
    /// A VM directory with a spec (any: `logs` only needs it to exist) and
    /// its console log written as two files of numbered lines.
    func makeLog(_ cevm: borrowing CEVMHarness, name: String, lines: Int, padding: Int = 0) throws {
        let directory = "\(cevm.home)/vms/\(name)"
        try Files.makeDirectory(directory)
        try Files.writeAtomically(Array("{}".utf8), to: "\(directory)/spec.json")
        let pad = String(repeating: "x", count: padding)
        for (file, range) in [("console.log.1", 0..<(lines / 2)), ("console.log", (lines / 2)..<lines)] {
            let fd = try Files.openForAppend("\(directory)/\(file)")
            defer { close(fd) }
            var batch = ""
            for n in range {
                batch += "2026-12-02T20:00:00.000000Z line \(n) \(pad)\n"
                if batch.utf8.count > 1 << 20 {
                    try Files.writeAll(fd, Array(batch.utf8))
                    batch = ""
                }
            }
            try Files.writeAll(fd, Array(batch.utf8))
        }
    }

    @Test func logsReadsThePreviousFileThenTheCurrentOne() throws {
        let cevm = try CEVMHarness()
        try makeLog(cevm, name: "r", lines: 1000)
        let result = try cevm.run(["logs", "r", "--no-timestamps"])
        #expect(result.ok, "\(result.stderr)")
        #expect(result.stdout.split(separator: "\n").map(String.init) == (0..<1000).map { "line \($0) " })
        let json = try cevm.run(["logs", "r", "--json"])
        #expect(json.stdout.split(separator: "\n").count == 1000)
    }

    /// `cevm logs`'s peak resident memory (GNU time's %M), in KiB.
    func peakMemory(_ cevm: borrowing CEVMHarness, _ name: String) throws -> Int {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/time")
        process.arguments = ["-f", "%M", cevm.binary, "logs", name]
        process.environment = ProcessInfo.processInfo.environment.merging(["CEVM_HOME": cevm.home]) { $1 }
        process.standardOutput = FileHandle.nullDevice
        let err = Pipe()
        process.standardError = err
        try process.run()
        let report = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0, let kib = report.split(separator: "\n").last.flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) })
        else { throw HarnessError("cevm logs \(name): \(report)") }
        return kib
    }

    /// 64 MiB of log through `cevm logs` needs no more memory than one
    /// line does (the whole-file reader it replaced peaked at about 7 × the
    /// log: 496 MiB for 67 MiB).
    @Test(.enabled(if: Files.exists("/usr/bin/time"), "needs GNU time"))
    func logsStreamsInConstantMemory() throws {
        let cevm = try CEVMHarness()
        try makeLog(cevm, name: "small", lines: 2)
        try makeLog(cevm, name: "big", lines: 500_000, padding: 100)
        let total = try Files.size("\(cevm.home)/vms/big/console.log") + Files.size("\(cevm.home)/vms/big/console.log.1")
        #expect(total > 60 << 20)
        let small = try peakMemory(cevm, "small")
        let big = try peakMemory(cevm, "big")
        #expect(big < small + 8 << 10, "cevm logs peaked at \(big) KiB for \(total >> 20) MiB of log, \(small) KiB for two lines")
    }
}
