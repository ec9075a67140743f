#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation

/// A blocking client of a switch's control socket, for the CLI and the
/// supervisor (from a thread that may block, not an event loop).
///
/// ```swift
/// let client = try NetSwitchClient.connect(paths.controlSocket)
/// defer { client.close() }
/// let (reply, fd) = try client.request(NetRequest(op: .attach, vm: "a", instance: 1))
/// // fd: QEMU's end of the port, for `-netdev stream,addr.type=fd`
/// ```
public final class NetSwitchClient {
    public enum Error: Swift.Error, Sendable, CustomStringConvertible {
        case notRunning(String, SystemError)
        case closed
        case lineTooLong
        case badReply(String)
        case refused(String)

        public var description: String {
            switch self {
            case .notRunning(let path, let error): return "the switch is not running (\(path): \(error))"
            case .closed: return "the switch closed the control connection"
            case .lineTooLong: return "the switch's reply is longer than \(NetSwitchClient.maximumReplyBytes) bytes"
            case .badReply(let why): return "the switch's reply is not understood: \(why)"
            case .refused(let message): return message
            }
        }
    }

    public static let maximumReplyBytes = 16 << 20

    private let fd: Int32
    private var buffered: [UInt8] = []
    private var descriptors: [Int32] = []
    private var isClosed = false

    private init(fd: Int32) { self.fd = fd }

    /// Connects to the control socket; replies wait at most `timeoutSeconds`.
    public static func connect(_ path: String, timeoutSeconds: Int = 30) throws(Error) -> NetSwitchClient {
        let fd: Int32
        do { fd = try UnixSocket.connect(path: path) } catch let error as SystemError {
            throw .notRunning(path, error)
        } catch {
            throw .notRunning(path, SystemError("connect", errno: EIO, subject: path))
        }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return NetSwitchClient(fd: fd)
    }

    /// Sends one request, returns its reply and the descriptor that came
    /// with it (the caller owns and closes it). A reply with `ok: false`
    /// is returned, not thrown: `requireOK` throws it.
    public func request(_ request: NetRequest) throws -> (NetResponse, Int32?) {
        var line = try JSONEncoder().encode(request)
        line.append(0x0A)
        try Files.writeAll(fd, line)
        return try readReply()
    }

    /// `request`, throwing the switch's error when the reply is not ok.
    public func requireOK(_ request: NetRequest) throws -> (NetResponse, Int32?) {
        let (reply, descriptor) = try self.request(request)
        guard reply.ok else {
            if let descriptor { Glibc.close(descriptor) }
            throw Error.refused(reply.error ?? "the switch refused \(request.op.rawValue)")
        }
        return (reply, descriptor)
    }

    /// Sends raw bytes (tests of hostile input) and reads one reply.
    public func requestRaw(_ bytes: [UInt8]) throws -> (NetResponse, Int32?) {
        try Files.writeAll(fd, bytes)
        return try readReply()
    }

    private func readReply() throws -> (NetResponse, Int32?) {
        while true {
            if let newline = buffered.firstIndex(of: 0x0A) {
                let line = Array(buffered[..<newline])
                buffered.removeFirst(newline + 1)
                let reply: NetResponse
                do { reply = try JSONDecoder().decode(NetResponse.self, from: Data(line)) } catch {
                    throw Error.badReply("\(error)")
                }
                let descriptor = descriptors.first
                for extra in descriptors.dropFirst() { Glibc.close(extra) }
                descriptors = []
                return (reply, descriptor)
            }
            if buffered.count > Self.maximumReplyBytes { throw Error.lineTooLong }
            let (bytes, fds) = try FDPassing.receive(fd, capacity: 65536)
            descriptors += fds
            if bytes.isEmpty { throw Error.closed }
            buffered += bytes
        }
    }

    public func close() {
        for descriptor in descriptors { Glibc.close(descriptor) }
        descriptors = []
        if !isClosed { Glibc.close(fd) }
        isClosed = true
    }

    deinit { close() }
}
