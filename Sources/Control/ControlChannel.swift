#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import NIOCore
import NIOPosix
import QMP
import VMStore

/// Serves the control socket (0600) until the task is cancelled.
/// Connections are handled concurrently in a discarding task group; every
/// request is validated here, before `handle` acts on it.
public struct ControlServer: Sendable {
    let path: String
    let handle: @Sendable (ControlRequest) async -> ControlResponse

    public init(path: String, handle: @escaping @Sendable (ControlRequest) async -> ControlResponse) {
        self.path = path
        self.handle = handle
    }

    public func run(ready: @escaping @Sendable () -> Void) async throws {
        unlink(path)
        // Created 0600 (no window in which another user could connect); NIO takes the bound socket over.
        let socket = try UnixSocket.bindPrivate(path: path)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(socket) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(QMPFrameDecoder(maximumLineLength: 1 << 20)))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        ready()
        try await withTaskCancellationHandler {
            try await server.executeThenClose { connections in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in connections {
                        group.addTask { try? await serve(connection) }
                    }
                }
            }
        } onCancel: {
            server.channel.close(promise: nil)
        }
    }

    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async throws {
        try await connection.executeThenClose { inbound, outbound in
            for try await line in inbound {
                let response: ControlResponse
                if let message = try? JSONDecoder().decode(ControlMessage.self, from: Data(line.readableBytesView)) {
                    do {
                        if let request = try message.validatedRequest() {
                            response = await handle(request)
                        } else {
                            response = ControlResponse(ok: false, error: "malformed control request")
                        }
                    } catch {
                        response = ControlResponse(ok: false, error: "invalid control request: \(error)")
                    }
                } else {
                    response = ControlResponse(ok: false, error: "malformed control request")
                }
                var data = try JSONEncoder().encode(response)
                data.append(0x0a)
                try await outbound.write(ByteBuffer(bytes: data))
            }
        }
    }
}

/// The client side of the control socket.
public enum ControlClient {
    public static func send(_ request: ControlRequest, to paths: VMPaths, name: VMName, timeout: Duration = .seconds(600)) async throws -> ControlResponse {
        do {
            return try await withThrowingTaskGroup(of: ControlResponse.self) { group in
                group.addTask { try await exchange(request, path: paths.controlSocket, name: name) }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    throw ControlError.unreachable(name, "no answer within \(timeout)")
                }
                defer { group.cancelAll() }
                guard let first = try await group.next() else { throw ControlError.unreachable(name, "no answer") }
                return first
            }
        } catch let error as ControlError {
            throw error
        } catch {
            throw ControlError.unreachable(name, "\(error)")
        }
    }

    private static func exchange(_ request: ControlRequest, path: String, name: VMName) async throws -> ControlResponse {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: path) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(QMPFrameDecoder(maximumLineLength: 16 << 20)))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var data = try JSONEncoder().encode(ControlMessage(request))
            data.append(0x0a)
            try await outbound.write(ByteBuffer(bytes: data))
            for try await line in inbound {
                let response = try JSONDecoder().decode(ControlResponse.self, from: Data(line.readableBytesView))
                // Checked here too: the CLI prints and acts on the status it gets.
                do { try response.status?.validate() } catch {
                    throw ControlError.unreachable(name, "invalid answer: \(error)")
                }
                return response
            }
            throw ControlError.unreachable(name, "the supervisor closed the connection")
        }
    }
}
