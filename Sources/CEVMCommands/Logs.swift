#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CEVMSystem
import Foundation
import Supervisor
import VMStore

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a VM's serial console, each line timestamped on the host.",
        discussion: "The log continues across checkpoints and restores of the VM.")

    @OptionGroup var vm: VMArgument

    @Flag(name: .shortAndLong, help: "Keep printing new lines until the VM stops.")
    var follow = false

    @Flag(name: .customLong("no-timestamps"), help: "Print only the guest's text.")
    var noTimestamps = false

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let (_, paths) = try vm.existing(in: common.home)
            // Constant memory: lines are printed as they are read, in
            // batches of at most about 64 KiB.
            var out = ""
            let waitForMore: (() async -> Bool)? =
                follow
                ? {
                    FileHandle.standardOutput.write(Data(out.utf8))
                    out = ""
                    guard paths.supervisorAlive else { return false }
                    try? await Task.sleep(for: .milliseconds(100))
                    return true
                } : nil
            try await ConsoleLogReader(path: paths.consoleLog).read(follow: waitForMore) { raw in
                guard !raw.isEmpty else { return }
                let line = ConsoleLog.parse(Substring(decoding: raw, as: UTF8.self))
                if common.json {
                    out += String(decoding: try JSONEncoder().encode(line), as: UTF8.self) + "\n"
                } else {
                    out += (noTimestamps || line.time.isEmpty ? line.text : "\(line.time) \(line.text)") + "\n"
                }
                if out.utf8.count >= 1 << 16 {
                    FileHandle.standardOutput.write(Data(out.utf8))
                    out = ""
                }
            }
            FileHandle.standardOutput.write(Data(out.utf8))
        }
    }
}
