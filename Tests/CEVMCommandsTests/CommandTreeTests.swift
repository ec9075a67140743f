import ArgumentParser
import Testing

@testable import CEVMCommands

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
