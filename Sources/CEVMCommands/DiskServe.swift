#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CEVMSystem
import DiskExportNBD
import DiskManager
import Foundation
import NBDServer
import QCOW2
import Supervisor
import VMStore

/// `cevm disk serve`: one qcow2 image (and its backing chain) served over
/// NBD by cevm's disk manager, as a VM's supervisor serves its disk, until
/// SIGINT or SIGTERM.
struct DiskServe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a writable qcow2 image over NBD on a Unix socket through cevm's disk manager.",
        discussion: """
            Reads come from the image, else its backing chain; writes go to the image (the backing \
            files are never written). Runs until SIGINT or SIGTERM, then flushes the image and stops. \
            Clients: qemu-img, qemu-io, QEMU's -blockdev driver=nbd, with the URI printed at start.
            """)

    @Argument(help: "A qcow2 image, opened writable (it must be clean: no dirty bit, no internal snapshots).")
    var image: String

    @Option(help: "The Unix socket to listen on (created 0600; a stale socket file is replaced).")
    var socket: String

    @Option(help: "The export's name.")
    var export: String = "disk"

    @OptionGroup var common: CommonOptions

    struct Report: Encodable {
        var uri: String
        var socket: String
        var export: String
        var image: String
        var virtualSize: UInt64
        var clusterSize: UInt64
    }

    func run() async throws {
        try await Output.reporting {
            let socketPath = Home.absolute(socket)
            try Self.checkSocketPath(socketPath)
            let imagePath = Home.absolute(image)
            let top = try Self.openImage(imagePath)
            // Two `cevm disk serve` of one image would both write it.
            guard let lock = try FileLock.tryAcquire(imagePath) else {
                throw CLIError("\(imagePath) is being served by another cevm process")
            }
            defer { withExtendedLifetime(lock) {} }
            let disk = ManagedDisk(top: top)
            let server = NBDServer(configuration: .init(log: { record in
                if record.level >= .warning { StandardError.write("cevm: \(record.description)\n") }
            }))
            let stop = AsyncSignal()
            let sources = Self.installSignalHandlers(stop)
            defer { sources.forEach { $0.cancel() } }
            do {
                try server.addExport(name: export, description: "cevm disk serve \(imagePath)", export: DiskExport(disk: disk))
                try await server.listen(unixSocketPath: socketPath)
            } catch {
                await server.shutdown()
                throw CLIError("\(error)")
            }
            let uri = Self.uri(export: export, socket: socketPath)
            if common.json {
                try Output.json(Report(
                    uri: uri, socket: socketPath, export: export, image: imagePath, virtualSize: disk.virtualSize,
                    clusterSize: disk.clusterSize))
            } else {
                Output.line(uri)
            }
            await stop.wait()
            await server.shutdown()
            do { try await disk.flush() } catch { throw CLIError("flushing \(imagePath): \(error)") }
            if !common.json { Output.line("stopped; \(imagePath) flushed") }
        }
    }

    /// The NBD URI of an export on a Unix socket (export and path as given:
    /// cevm's names and paths need no escaping beyond what QEMU accepts).
    static func uri(export: String, socket: String) -> String {
        "nbd+unix:///\(export)?socket=\(socket)"
    }

    static func checkSocketPath(_ path: String) throws {
        if let problem = VMPaths.problemCreatingSocket(at: path) { throw CLIError(problem) }
    }

    static func openImage(_ path: String) throws -> QCOW2Image {
        guard Files.exists(path) else { throw CLIError("image \(path) does not exist") }
        guard access(path, R_OK | W_OK) == 0 else {
            throw CLIError("image \(path) is not readable and writable: \(String(cString: strerror(errno)))")
        }
        let top: QCOW2Image
        do { top = try QCOW2Image.open(path: path, writable: true) } catch {
            throw CLIError("cannot serve \(path): \(error)")
        }
        guard top.isWritable else { throw CLIError("cannot serve \(path): not writable") }
        return top
    }

    /// SIGINT and SIGTERM fire `stop` instead of ending the process; SIGPIPE
    /// is ignored (a reader of our output that went away must not kill us
    /// before we stopped what we started).
    static func installSignalHandlers(_ stop: AsyncSignal) -> [any DispatchSourceSignal] {
        signal(SIGPIPE, SIG_IGN)
        return [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler { stop.fire() }
            source.resume()
            return source
        }
    }
}

/// Messages to stderr with write(2), errors ignored: unlike FileHandle, a
/// closed or broken stderr never stops the command.
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
