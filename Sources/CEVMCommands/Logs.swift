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
            var offset: Int64 = 0
            var pending: [UInt8] = []
            while true {
                let alive = paths.supervisorAlive
                let chunk = try readFrom(paths.consoleLog, offset: offset)
                offset += Int64(chunk.count)
                pending += chunk
                if let lastNewline = pending.lastIndex(of: 0x0a) {
                    let complete = pending[...lastNewline]
                    pending.removeSubrange(...lastNewline)
                    try emit(String(decoding: complete, as: UTF8.self))
                }
                if !follow || (!alive && chunk.isEmpty) { break }
                if chunk.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
            }
            if !pending.isEmpty { try emit(String(decoding: pending, as: UTF8.self)) }
        }
    }

    private func emit(_ text: String) throws {
        var out = ""
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) where !raw.isEmpty {
            let line = ConsoleLog.parse(raw)
            if common.json {
                let data = try JSONEncoder().encode(line)
                out += String(decoding: data, as: UTF8.self) + "\n"
            } else {
                out += (noTimestamps || line.time.isEmpty ? line.text : "\(line.time) \(line.text)") + "\n"
            }
        }
        FileHandle.standardOutput.write(Data(out.utf8))
    }

    private func readFrom(_ path: String, offset: Int64) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return errno == ENOENT ? [] : try { throw SystemError("open", errno: errno, subject: path) }() }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var position = off_t(offset)
        while true {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, position) }
            if n <= 0 { break }
            out += buffer[0..<n]
            position += off_t(n)
        }
        return out
    }
}
