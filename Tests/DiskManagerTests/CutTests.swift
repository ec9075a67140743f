import Dispatch
import Foundation
import QCOW2
import Synchronization
import TestSupport
import Testing

@testable import DiskManager

/// The cut blocks nothing: it switches requests to the integration and
/// returns, while the integration's thread waits for the plain-mode I/O
/// already queued for T and only then freezes S0.
@Suite struct CutTests {
    @Test func theCutReturnsWhileTheIOThreadIsBusy() async throws {
        var f = try IntegrationRunTests.Fixture(size: 1 << 20, clusterBits: 12, seed: 71)
        let disk = f.disk
        // A cluster T does not hold: a plain write queued before the cut
        // must reach T first and so be part of S0.
        let t = disk.top
        let free = try #require((0..<256).first { k in
            if case .unallocated = (try? t.clusterState(UInt64(k))) ?? .data(host: 0) { return true }
            return false
        })
        // The I/O thread is busy (a long fdatasync, say) until the test
        // lets it go, or for at most 60 s (long, as other tests running
        // qemu-img may keep the cooperative pool, and this test's tasks,
        // waiting for seconds).
        let gate = DispatchSemaphore(value: 0)
        let woken = Woken()
        disk.io.submit {
            woken.start()
            woken.set(gate.wait(timeout: .now() + 60) == .success)
        }
        #expect(await eventually(timeout: .seconds(60)) { woken.started })
        let bytes = pattern(4096, seed: 7)
        let write = Task { try await disk.write(offset: UInt64(free * 4096), bytes: bytes) }
        #expect(await eventually(timeout: .seconds(60)) { disk.io.queuedJobs == 1 }, "the write waits on the I/O thread, behind the busy job")
        f.model.replaceSubrange(free * 4096..<free * 4096 + 4096, with: bytes)

        let integration = try disk.cut(u: try f.newU(), record: nil, incremental: false)
        // The cut returned with the I/O thread still busy (with the cut's
        // old drain it returned only once the busy job timed out): S0 is not
        // frozen yet.
        #expect(integration.switchOverClusters == nil)
        let read = Task { try await disk.read(offset: UInt64(free * 4096), length: 4096) }
        gate.signal()
        try await write.value
        #expect(try await read.value == bytes, "the read waited for S0, which came after the write")
        #expect(woken.value == true, "the busy job was let go by the test, not by its timeout")
        _ = try await integration.wait()
        disk.settle()
        #expect(integration.switchOverClusters?.contains(free) == true, "the write queued before the cut is in S0")
        try await disk.flush()
        try f.expectImage(f.scratch.file("u.qcow2"), equals: f.model, "u")
    }

    /// What the busy job saw: that it started, then how its wait ended.
    final class Woken: Sendable {
        private let state = Mutex<(started: Bool, value: Bool?)>((false, nil))
        func start() { state.withLock { $0.started = true } }
        func set(_ value: Bool) { state.withLock { $0.value = value } }
        var started: Bool { state.withLock { $0.started } }
        var value: Bool? { state.withLock { $0.value } }
    }
}
