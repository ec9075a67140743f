#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import VMStore

/// Why a benchmark stopped: the message is for a person, printed as it is
/// by the command that ran the benchmark.
public struct BenchError: Swift.Error, Sendable, CustomStringConvertible {
    public let description: String

    public init(_ message: String) { self.description = message }
}

/// The bundled guest's files, as the command found them (scripts/build-guest).
public struct BenchGuest: Sendable {
    public var kernel: String
    public var initrd: String
    /// The disk template (raw ext2 with the workload's records and log).
    public var disk: String

    /// The workload's first console line: the guest has booted.
    public static let readyMarker = "cevm-workload start"

    public init(kernel: String, initrd: String, disk: String) {
        self.kernel = kernel
        self.initrd = initrd
        self.disk = disk
    }
}

/// What a benchmark prints: progress on a terminal's stderr, results on stdout.
enum BenchOutput {
    /// Progress goes to stderr, and only when stderr is a terminal.
    static let isTerminal = isatty(STDERR_FILENO) == 1

    static func progress(_ message: String) {
        guard isTerminal else { return }
        StandardError.write("\u{1B}[2K\r\(message)")
    }

    static func endProgress() {
        guard isTerminal else { return }
        StandardError.write("\u{1B}[2K\r")
    }

    static func line(_ text: String) {
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    static func json<T: Encodable>(_ value: T) throws {
        let data = try StoreCoding.encoder().encode(value)
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }
}

/// Messages to stderr with write(2), errors ignored: a closed or broken
/// stderr never stops a benchmark before it stopped what it started.
enum StandardError {
    static func write(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            bytes = bytes.dropFirst(n)
        }
    }
}

/// Left-aligned columns.
func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    let widths = (0..<first.count).map { column in rows.map { $0[column].count }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

/// "1.5 GiB", "512 B".
func formatBytes(_ bytes: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f ", value) + units[unit]
}

/// Unix sockets the benchmarks serve on.
enum BenchSocket {
    /// The NBD URI of an export on a Unix socket.
    static func uri(export: String, socket: String) -> String {
        "nbd+unix:///\(export)?socket=\(socket)"
    }

    /// A path a socket can be created at: short enough, not another kind of file.
    static func check(_ path: String) throws {
        if let problem = VMPaths.problemCreatingSocket(at: path) { throw BenchError(problem) }
    }
}
