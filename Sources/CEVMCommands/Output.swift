#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CEVMSystem
import Foundation
import Supervisor
import VMStore

/// Options every command takes.
struct CommonOptions: ParsableArguments {
    @Flag(name: .long, help: "Print the result as JSON.")
    var json = false

    var home: Home { Home.fromEnvironment() }
}

/// A failure reported to the user: the message is printed as it is and the
/// command exits non-zero.
struct CLIError: Error, CustomStringConvertible {
    let description: String

    init(_ message: String) { self.description = message }
    init(_ error: any Error) { self.description = "\(error)" }
}

enum Output {
    /// Progress goes to stderr, and only when stderr is a terminal.
    static let isTerminal = isatty(STDERR_FILENO) == 1

    static func progress(_ message: String) {
        guard isTerminal else { return }
        FileHandle.standardError.write(Data("\u{1B}[2K\r\(message)".utf8))
    }

    /// A line on stderr, terminal or not: something the command did on its
    /// own that the user should know of.
    static func notice(_ message: String) {
        endProgress()
        FileHandle.standardError.write(Data("cevm: \(message)\n".utf8))
    }

    static func endProgress() {
        guard isTerminal else { return }
        FileHandle.standardError.write(Data("\u{1B}[2K\r".utf8))
    }

    static func line(_ text: String) {
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    static func json<T: Encodable>(_ value: T) throws {
        let data = try StoreCoding.encoder().encode(value)
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }

    /// Runs a command body, turning any error into "cevm: error: ..." on
    /// stderr and exit status 1.
    static func reporting(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as ExitCode {
            throw error
        } catch {
            endProgress()
            FileHandle.standardError.write(Data("cevm: error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }
}

/// The NAME argument of a command about one existing VM.
struct VMArgument: ParsableArguments {
    @Argument(help: "The VM's name.") var name: String

    /// The VM's name and files; an unknown VM is an error naming it.
    func existing(in home: Home) throws -> (VMName, VMPaths) { try Self.existing(name, in: home) }

    static func existing(_ text: String, in home: Home) throws -> (VMName, VMPaths) {
        let name = try parseName(text)
        let paths = home.vm(name)
        guard Files.exists(paths.spec) else { throw SupervisorError.unknownVM(name) }
        return (name, paths)
    }
}

func parseName(_ text: String) throws -> VMName {
    do { return try VMName(text) } catch { throw CLIError(error.description) }
}

/// Parses a size: bytes as a plain number with a unit K, M, G, T (powers
/// of 1024), optionally followed by "iB" or "B".
func parseSize(_ text: String, defaultUnit: Int64) throws -> Int64 {
    var digits = text.trimmingCharacters(in: .whitespaces).uppercased()
    for suffix in ["IB", "B"] where digits.hasSuffix(suffix) && digits.count > suffix.count {
        digits.removeLast(suffix.count)
        break
    }
    var multiplier = defaultUnit
    if let last = digits.last, let shift = ["K": 10, "M": 20, "G": 30, "T": 40][String(last)] {
        multiplier = Int64(1) << shift
        digits.removeLast()
    }
    guard let value = Int64(digits), value > 0, value <= (Int64.max / multiplier) else {
        throw CLIError("malformed size '\(text)' (examples: 512M, 2G, 1048576)")
    }
    return value * multiplier
}
