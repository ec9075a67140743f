import ArgumentParser

/// The `cevm` command tree. The executable only calls `CEVM.main()`.
public struct CEVM: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "cevm",
        abstract: "Checkpoint running QEMU virtual machines without stopping them.",
        discussion: """
            State lives under $CEVM_HOME (default ~/.local/state/cevm). \
            With no image options, `cevm run` boots the bundled guest (build it with `make guest`).
            """,
        subcommands: [
            Run.self, PS.self, Status.self, Logs.self, Stop.self, Remove.self, Checkpoint.self, RecordsCommand.self, Restore.self,
            Disk.self, Inspect.self, ScheduleCommand.self, ReportCommand.self, Bench.self, Net.self,
            Supervise.self,
        ]
    )

    public init() {}
}

extension CEVM {
    /// Parses the process's arguments and runs the chosen subcommand.
    public static func launch() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
