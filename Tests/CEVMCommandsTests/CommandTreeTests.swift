import ArgumentParser
import Testing

@testable import CEVMCommands
import Supervisor

@Suite struct CommandTreeTests {
    static func walk(_ command: ParsableCommand.Type, path: [String] = []) -> [(ParsableCommand.Type, [String])] {
        var all = [(command, path)]
        for sub in command.configuration.subcommands {
            let name = sub.configuration.commandName ?? String(describing: sub).lowercased()
            all += walk(sub, path: path + [name])
        }
        return all
    }

    @Test func everyCommandHasHelp() {
        let commands = Self.walk(CEVM.self)
        #expect(commands.count >= 7)
        for (command, path) in commands {
            let help = CEVM.helpMessage(for: command)
            #expect(help.contains("USAGE"), "no usage for \(path)")
            #expect(!(command.configuration.abstract.isEmpty), "no abstract for \(path)")
        }
    }

    @Test func everyCommandTakesJSON() throws {
        for (command, path) in Self.walk(CEVM.self) where command.configuration.subcommands.isEmpty && command != Supervise.self {
            let help = CEVM.helpMessage(for: command)
            #expect(help.contains("--json"), "\(path) has no --json")
        }
    }

    /// `list` and `export` are subcommands of `cevm records` before they are
    /// a VM's name: `cevm records list NAME` reaches any VM, and the help
    /// says so.
    @Test func recordsListReachesAVMNamedLikeASubcommand() throws {
        for name in ["export", "list", "job"] {
            let list = try #require(try CEVM.parseAsRoot(["records", "list", name]) as? RecordsList, "records list \(name)")
            #expect(list.name == name)
        }
        #expect(try CEVM.parseAsRoot(["records", "job"]) is RecordsList, "list is the default subcommand")
        #expect(throws: (any Error).self, "`records export` alone is the export subcommand, missing its arguments") {
            try CEVM.parseAsRoot(["records", "export"])
        }
        // Help text wraps at the terminal's width: compare with single spaces.
        let help = CEVM.helpMessage(for: RecordsCommand.self).split(whereSeparator: \.isWhitespace).joined(separator: " ")
        #expect(help.contains("say `cevm records list NAME` (`cevm records list export`)"), "\(help)")
    }

    @Test func runRejectsBadNamesBeforeDoingAnything() throws {
        #expect(throws: (any Error).self) { try parseName("../etc") }
        #expect(throws: (any Error).self) { try parseName("a/b") }
    }

    @Test(arguments: [("128", Int64(128) << 20), ("1G", 1 << 30), ("512M", 512 << 20), ("64MiB", 64 << 20), ("2g", 2 << 30)])
    func sizes(text: String, bytes: Int64) throws {
        #expect(try parseSize(text, defaultUnit: 1 << 20) == bytes)
    }

    @Test(arguments: ["", "M", "-1", "1X", "0", "99999999999999G"])
    func badSizes(text: String) {
        #expect(throws: CLIError.self) { try parseSize(text, defaultUnit: 1 << 20) }
    }
}

/// Numbers from the command line are checked where they enter, by the same
/// functions the supervisor uses, and refused with an error (never a trap).
@Suite struct InputValidationTests {
    @Test(arguments: ["nan", "inf", "=-inf", "=-1", "1e300", "3601"])
    func bootGraceMustBeAFiniteNumberOfSeconds(value: String) async throws {
        let arguments = value.hasPrefix("=") ? ["run", "x", "--boot-grace\(value)"] : ["run", "x", "--boot-grace", value]
        let run = try #require(try CEVM.parseAsRoot(arguments) as? Run)
        await #expect(throws: ExitCode.self) { try await run.run() }
        let supervise = try #require(try CEVM.parseAsRoot(arguments.map { $0 == "run" ? "supervise" : $0 }) as? Supervise)
        await #expect(throws: ExitCode.self) { try await supervise.run() }
    }
}
