import Foundation
import Testing

@testable import QMP

/// Runs `body` against a fresh fake server and always shuts the server down.
private func withFakeServer(
    greeting: String? = FakeQMPServer.defaultGreeting,
    _ body: (FakeQMPServer) async throws -> Void
) async throws {
    let server = try await FakeQMPServer.start(greeting: greeting)
    do {
        try await body(server)
    } catch {
        await server.shutdown()
        throw error
    }
    await server.shutdown()
}

@Suite("QMPClient against a fake server", .timeLimit(.minutes(1)))
struct QMPClientTests {
    @Test("greeting is parsed and kept")
    func greeting() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            #expect(client.greeting.major == 7)
            #expect(client.greeting.minor == 2)
            #expect(client.greeting.micro == 1)
            #expect(client.greeting.versionString == "7.2.1")
            #expect(client.greeting.package == "Fake 7.2.1")
            #expect(client.greeting.capabilities == ["oob"])
            #expect(client.isConnected)
            await client.close()
        }
    }

    @Test("concurrent commands are matched to out-of-order replies by id")
    func concurrentOutOfOrder() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let names = (0..<8).map { "command-\($0)" }
            try await withThrowingTaskGroup(of: (String, JSONValue).self) { group in
                for name in names {
                    group.addTask { (name, try await client.execute(name, arguments: ["who": .string(name)])) }
                }
                var requests: [JSONValue] = []
                for _ in names { requests.append(try await server.nextRequest()) }
                #expect(Set(requests.compactMap { $0["id"] }).count == names.count)
                for request in requests.reversed() {
                    #expect(request["arguments"]?["who"] == request["execute"])
                    try await server.reply(to: request, with: ["echo": request["execute"] ?? .null])
                }
                var seen = 0
                for try await (name, result) in group {
                    #expect(result["echo"]?.stringValue == name)
                    seen += 1
                }
                #expect(seen == names.count)
            }
            await client.close()
        }
    }

    @Test("an error reply keeps command, class and description; the connection stays usable")
    func errorReply() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let failing = Task { try await client.execute("device_del", arguments: ["id": "nope"]) }
            let request = try await server.nextRequest()
            #expect(request["execute"] == "device_del")
            #expect(request["arguments"] == ["id": "nope"])
            try await server.replyError(to: request, errorClass: "DeviceNotFound", description: "Device 'nope' not found")
            let expected = QMPError.commandFailed(
                command: "device_del", errorClass: "DeviceNotFound", description: "Device 'nope' not found")
            await #expect(throws: expected) { try await failing.value }
            #expect(expected.description.contains("device_del"))
            #expect(expected.description.contains("DeviceNotFound"))

            let next = Task { try await client.execute("query-status") }
            try await server.reply(to: try await server.nextRequest(), with: ["status": "running"])
            #expect(try await next.value["status"]?.stringValue == "running")
            await client.close()
        }
    }

    @Test("typed results and Encodable arguments")
    func typed() async throws {
        struct Version: Decodable, Equatable {
            struct QEMU: Decodable, Equatable { var major: Int, minor: Int, micro: Int }
            var qemu: QEMU
            var package: String
        }
        struct Balloon: Encodable { var value: Int64 }

        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let version = Task { try await client.execute("query-version", as: Version.self) }
            try await server.reply(
                to: try await server.nextRequest(),
                with: ["qemu": ["major": 7, "minor": 2, "micro": 1], "package": "Fake"])
            #expect(try await version.value == Version(qemu: .init(major: 7, minor: 2, micro: 1), package: "Fake"))

            let balloon = Task { try await client.execute("balloon", arguments: Balloon(value: 1 << 40)) }
            let request = try await server.nextRequest()
            #expect(request["arguments"] == ["value": .int(1 << 40)])
            try await server.reply(to: request)
            #expect(try await balloon.value == [:])

            let mismatch = Task { try await client.execute("query-status", as: Version.self) }
            try await server.reply(to: try await server.nextRequest(), with: ["status": "running"])
            await #expect {
                try await mismatch.value
            } throws: { error in
                guard case QMPError.resultDecodingFailed(let command, _, let result, _) = error else { return false }
                return command == "query-status" && result == ["status": "running"]
            }

            await #expect(throws: QMPError.self) { try await client.execute("bad", arguments: [1, 2]) }
            #expect(client.isConnected)
            await client.close()
        }
    }

    @Test("events reach every subscriber in order; streams finish on disconnect")
    func events() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let first = client.events()
            let second = client.events()
            try await server.sendEvent("STOP")
            try await server.sendEvent("BLOCK_JOB_COMPLETED", data: ["device": "job0", "len": .int(1 << 40)], seconds: 5, microseconds: 6)
            await server.drop()

            let expected = [
                QMPEvent(name: "STOP", data: [:], timestamp: .init(seconds: 1_700_000_000, microseconds: 42)),
                QMPEvent(
                    name: "BLOCK_JOB_COMPLETED", data: ["device": "job0", "len": .int(1 << 40)],
                    timestamp: .init(seconds: 5, microseconds: 6)),
            ]
            var received: [QMPEvent] = []
            for await event in first { received.append(event) }
            #expect(received == expected)
            received = []
            for await event in second { received.append(event) }
            #expect(received == expected)

            var late = 0
            for await _ in client.events() { late += 1 }
            #expect(late == 0)
            #expect(client.closeReason == .closedByPeer)
        }
    }

    @Test("pending requests fail with .disconnected when the server hangs up; later calls fail at once")
    func disconnectFailsPending() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let tasks = (0..<3).map { index in Task { try await client.execute("slow-\(index)") } }
            for _ in tasks { _ = try await server.nextRequest() }
            await server.drop()
            for task in tasks {
                await #expect(throws: QMPError.disconnected) { try await task.value }
            }
            await #expect(throws: QMPError.disconnected) { try await client.execute("later") }
            #expect(client.closeReason == .closedByPeer)
            #expect(!client.isConnected)
            await client.close()
            #expect(client.closeReason == .closedByPeer)
        }
    }

    @Test("close() fails pending requests, finishes streams and is idempotent")
    func closeIsIdempotent() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let events = client.events()
            let pending = Task { try await client.execute("slow") }
            _ = try await server.nextRequest()
            await client.close()
            await client.close()
            await #expect(throws: QMPError.disconnected) { try await pending.value }
            for await _ in events { Issue.record("no events expected") }
            #expect(client.closeReason == .closedByClient)
            await #expect(throws: QMPError.disconnected) { try await client.execute("later") }
        }
    }

    @Test("a cancelled request throws CancellationError and its late reply is ignored")
    func cancellation() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let slow = Task { try await client.execute("slow") }
            let request = try await server.nextRequest()
            slow.cancel()
            await #expect(throws: CancellationError.self) { try await slow.value }
            try await server.reply(to: request)

            let next = Task { try await client.execute("next") }
            try await server.reply(to: try await server.nextRequest(), with: "ok")
            #expect(try await next.value == "ok")
            #expect(client.isConnected)
            await client.close()
        }
    }

    @Test("a line over the cap closes the connection with lineTooLong")
    func lineCap() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path, maximumLineLength: 1024)
            let pending = Task { try await client.execute("query-something") }
            let request = try await server.nextRequest()
            try await server.reply(to: request, with: .string(String(repeating: "x", count: 4096)))
            await #expect(throws: QMPError.disconnected) { try await pending.value }
            #expect(client.closeReason == .failed(.lineTooLong(limit: 1024)))
        }
    }

    @Test("a reply with an unknown id is a protocol violation that closes the connection")
    func unknownID() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let pending = Task { try await client.execute("query-status") }
            _ = try await server.nextRequest()
            try await server.send(#"{"return": {}, "id": 999}"#)
            await #expect(throws: QMPError.disconnected) { try await pending.value }
            guard case .failed(.protocolViolation(let detail))? = client.closeReason else {
                Issue.record("unexpected close reason \(String(describing: client.closeReason))")
                return
            }
            #expect(detail.contains("unknown id 999"))
        }
    }

    @Test("malformed messages are protocol violations", arguments: [
        "this is not json", "[1, 2]", #"{"hello": 1}"#, #"{"event": 5}"#, #"{"error": {"class": "GenericError"}, "id": 1}"#,
        #"{"error": {"class": "GenericError", "desc": "JSON parse error"}}"#,
    ])
    func malformed(message: String) async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let events = client.events()
            try await server.send(message)
            for await _ in events {}
            guard case .failed(.protocolViolation)? = client.closeReason else {
                Issue.record("unexpected close reason \(String(describing: client.closeReason))")
                return
            }
        }
    }

    @Test("no greeting: connect times out")
    func handshakeTimeout() async throws {
        try await withFakeServer(greeting: nil) { server in
            await #expect(throws: QMPError.timedOut(after: .milliseconds(300))) {
                try await QMPClient.connect(unixSocketPath: server.path, timeout: .milliseconds(300))
            }
        }
    }

    @Test("a malformed greeting fails connect with a protocol violation")
    func badGreeting() async throws {
        try await withFakeServer(greeting: #"{"QMP": {"version": "seven"}}"#) { server in
            await #expect {
                try await QMPClient.connect(unixSocketPath: server.path)
            } throws: { error in
                guard case QMPError.protocolViolation(let detail) = error else { return false }
                return detail.contains("greeting")
            }
        }
    }

    @Test("no socket: connect fails with connectionFailed")
    func noSocket() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("qmp-missing-\(UUID().uuidString)/qmp.sock").path
        await #expect {
            try await QMPClient.connect(unixSocketPath: path)
        } throws: { error in
            guard case QMPError.connectionFailed(let failedPath, _) = error else { return false }
            return failedPath == path
        }
    }
}

@Suite("QMPClient.resume after a migration", .timeLimit(.minutes(1)))
struct QMPResumeTests {
    static let notFinalized = "Migration is not finalized yet"

    @Test("a cont refused while the source is in finish-migrate is retried until QEMU takes it")
    func refusalDuringFinishMigrateIsWaitedOut() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let resumed = Task { try await client.resume() }
            for _ in 0..<2 {
                let cont = try await server.nextRequest()
                #expect(cont["execute"] == "cont")
                try await server.replyError(to: cont, errorClass: "GenericError", description: Self.notFinalized)
                let status = try await server.nextRequest()
                #expect(status["execute"] == "query-status")
                try await server.reply(to: status, with: ["status": "finish-migrate"])
            }
            let last = try await server.nextRequest()
            #expect(last["execute"] == "cont")
            try await server.reply(to: last)
            try await resumed.value
            await client.close()
        }
    }

    @Test("a not-finalized refusal is retried when the run state moved on before the query")
    func refusalRacingTheCleanupIsRetried() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let resumed = Task { try await client.resume() }
            let cont = try await server.nextRequest()
            #expect(cont["execute"] == "cont")
            try await server.replyError(to: cont, errorClass: "GenericError", description: Self.notFinalized)
            // The cleanup ran between the refusal and this query.
            let status = try await server.nextRequest()
            #expect(status["execute"] == "query-status")
            try await server.reply(to: status, with: ["status": "postmigrate"])
            let again = try await server.nextRequest()
            #expect(again["execute"] == "cont")
            try await server.reply(to: again)
            try await resumed.value
            await client.close()
        }
    }

    @Test("a refusal in any other run state is thrown at once")
    func otherRefusalsAreThrown() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let resumed = Task { try await client.resume() }
            let cont = try await server.nextRequest()
            try await server.replyError(to: cont, errorClass: "GenericError", description: "Resetting the Virtual Machine is required")
            let status = try await server.nextRequest()
            try await server.reply(to: status, with: ["status": "internal-error"])
            await #expect(throws: QMPError.self) { try await resumed.value }
            await client.close()
        }
    }

    @Test("the wait is bounded: a source stuck in finish-migrate ends in the error")
    func theWaitIsBounded() async throws {
        try await withFakeServer { server in
            let client = try await QMPClient.connect(unixSocketPath: server.path)
            let resumed = Task { try await client.resume(finalizeWait: .milliseconds(50)) }
            let answering = Task {
                while true {
                    let request = try await server.nextRequest()
                    if request["execute"] == "cont" {
                        try await server.replyError(to: request, errorClass: "GenericError", description: Self.notFinalized)
                    } else {
                        try await server.reply(to: request, with: ["status": "finish-migrate"])
                    }
                }
            }
            await #expect(throws: QMPError.commandFailed(command: "cont", errorClass: "GenericError", description: Self.notFinalized)) {
                try await resumed.value
            }
            answering.cancel()
            await client.close()
        }
    }
}
