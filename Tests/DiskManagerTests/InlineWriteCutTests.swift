import Dispatch
import Foundation
import QCOW2
import Synchronization
import TestSupport
import Testing

@testable import DiskManager

/// Inline writes (a pwrite on the caller's thread, without the mode lock)
/// against cuts: a write registered before a cut reaches T before the
/// integration freezes S0, so it is in S0, hence in the record and in U;
/// a write that comes after the cut goes to the integration, hence to U
/// and never to the record.
@Suite struct InlineWriteCutTests {
    /// A write held between its registration and its pwrite: the cut
    /// returns at once (it no longer waits for the pwrite under the mode
    /// lock), the integration does not freeze S0 until the write is done,
    /// and the write is in the record and in U.
    @Test func theIntegrationWaitsForAnInlineWriteInFlight() async throws {
        var f = try IntegrationRunTests.Fixture(size: 1 << 20, clusterBits: 12, seed: 81)
        let gate = DispatchSemaphore(value: 0)
        let held = Held()
        let disk = ManagedDisk(
            top: f.disk.top, slowInlineWrite: .seconds(3600), inlineWritePause: .zero,
            inlineWriteHook: {
                guard held.enter() else { return }
                held.set(gate.wait(timeout: .now() + 60) == .success)
            })
        // Cluster 9, held by T (written through the I/O thread first), its table cached.
        let whole = pattern(4096, seed: 3)
        try await disk.write(offset: 9 * 4096, bytes: whole)
        f.model.replaceSubrange(9 * 4096..<10 * 4096, with: whole)
        let bytes = pattern(512, seed: 5)
        let write = Task {
            try await disk.write(offset: 9 * 4096 + 100, count: bytes.count, alone: true) { body in bytes.withUnsafeBytes(body) }
        }
        #expect(await eventually(timeout: .seconds(60)) { held.entered })
        #expect(disk.inFlight.count == 1)
        f.model.replaceSubrange(9 * 4096 + 100..<9 * 4096 + 612, with: bytes)

        let record = try f.newRecord("r.qcow2", backing: f.scratch.file("b.qcow2"))
        let integration = try disk.cut(u: try f.newU(), record: record, incremental: false)
        // The cut returned with the write still in flight; S0 waits for it.
        try await Task.sleep(for: .milliseconds(100))
        #expect(integration.switchOverClusters == nil, "S0 was frozen with an inline write in flight")
        gate.signal()
        try await write.value
        #expect(held.value == true, "the write was let go by the test, not by its timeout")
        #expect(disk.writesServedInline == 1)
        _ = try await integration.wait()
        disk.settle()
        #expect(integration.switchOverClusters?.contains(9) == true)
        try f.expectImage(f.scratch.file("r.qcow2"), equals: f.model, "record")
        try await disk.flush()
        try f.expectImage(f.scratch.file("u.qcow2"), equals: f.model, "u")
    }

    /// Writers doing inline whole-cluster writes, some of them slow, while cuts and
    /// integrations run back to back (a full record every tenth, incremental ones between): each
    /// record holds, for every cluster, a version at least as new as the
    /// last acknowledged before the cut was called and no newer than the
    /// last started before it returned; after each integration the disk
    /// (U) holds every cluster's last acknowledged version.
    @Test func inlineWritesRacingCutsLoseNoAcknowledgedWrite() async throws {
        let clusterSize = 4096, clusters = 64, writers = 4, rounds = 30
        let scratch = try Scratch()
        // B: version 0 of every cluster.
        let b = try QCOW2Image.create(path: scratch.file("b.qcow2"), virtualSize: UInt64(clusters * clusterSize), clusterBits: 12)
        for k in 0..<clusters { try b.write(Self.content(cluster: k, version: 0, clusterSize), at: UInt64(k * clusterSize)) }
        try b.flush()
        let t = try QCOW2Image.createOverlay(path: scratch.file("t.qcow2"), backingFile: scratch.file("b.qcow2"), clusterBits: 12)
        // One inline write in four pauses up to half a millisecond between
        // its registration and its pwrite (as a throttled pwrite would
        // take long), so cuts land while inline writes are in flight.
        let disk = ManagedDisk(
            top: t, slowInlineWrite: .seconds(3600), inlineWritePause: .zero,
            inlineWriteHook: {
                if Int.random(in: 0..<4) == 0 { usleep(UInt32.random(in: 50...500)) }
            })
        // T holds every cluster (through the I/O thread), so writes over them may go inline.
        for k in 0..<clusters { try await disk.write(offset: UInt64(k * clusterSize), bytes: Self.content(cluster: k, version: 0, clusterSize)) }

        let versions = Versions(clusters: clusters)
        let next = Versions(clusters: writers)  // each writer's next version (its `started` slot)
        var records: [(path: String, low: [Int], high: [Int])] = []
        var random = SeededRandom(seed: 82)
        for round in 0..<rounds {
            let path = scratch.file("r\(round).qcow2")
            let record = try QCOW2Image.createOverlay(
                path: path, backingFile: round % 10 == 0 ? scratch.file("b.qcow2") : scratch.file("r\(round - 1).qcow2"), clusterBits: 12)
            let u = try QCOW2Image.createOverlay(path: scratch.file("u\(round).qcow2"), backingFile: scratch.file("b.qcow2"), clusterBits: 12)
            // The writers run until just after the cut returned, so the
            // writes in flight at the cut are mostly their clusters' last:
            // one lost at the cut shows in the disk's content below.
            let stop = Stop()
            let (integration, low, high) = try await withThrowingTaskGroup(of: Void.self) { group in
                for w in 0..<writers {
                    group.addTask {
                        var version = next.started[w] + 1
                        while !stop.stopped {
                            // Each writer owns its clusters: one write in flight per cluster.
                            let k = w + writers * (version % (clusters / writers))
                            let bytes = Self.content(cluster: k, version: version, clusterSize)
                            versions.start(k, version)
                            try await disk.write(offset: UInt64(k * clusterSize), count: clusterSize, alone: true) { body in
                                bytes.withUnsafeBytes(body)
                            }
                            versions.ack(k, version)
                            next.start(w, version)
                            version += 1
                            if version % 64 == 0 { await Task.yield() }
                        }
                    }
                }
                try await Task.sleep(for: .microseconds(Int.random(in: 200...3000, using: &random)))
                let low = versions.acked
                let integration = try disk.cut(u: u, record: record, incremental: round % 10 != 0)
                let high = versions.started
                stop.stop()
                try await group.waitForAll()
                return (integration, low, high)
            }
            _ = try await integration.wait()
            disk.settle()
            records.append((path, low, high))
            let last = versions.acked
            for k in 0..<clusters {
                let version = try Self.version(of: await disk.read(offset: UInt64(k * clusterSize), length: clusterSize), cluster: k)
                #expect(version == last[k], "round \(round), cluster \(k): the disk holds \(version.map(String.init) ?? "(garbage)")")
            }
        }
        #expect(disk.writesServedInline > 0)
        for (round, r) in records.enumerated() {
            let image = try QCOW2Image.open(path: r.path)
            for k in 0..<clusters {
                let version = try Self.version(of: image.read(at: UInt64(k * clusterSize), count: clusterSize), cluster: k)
                #expect(version.map { r.low[k] <= $0 && $0 <= r.high[k] } == true,
                        "round \(round), cluster \(k): the record holds version \(version.map(String.init) ?? "(garbage)"), acknowledged before the cut \(r.low[k]), started before it returned \(r.high[k])")
            }
        }
        let last = versions.acked
        try await disk.flush()
        for k in 0..<clusters {
            let version = try Self.version(of: await disk.read(offset: UInt64(k * clusterSize), length: clusterSize), cluster: k)
            #expect(version == last[k], "cluster \(k)")
        }
        let check = try runTool(["qemu-img", "check", "-f", "qcow2", disk.top.path])
        #expect(check.status == 0, "\(check.output)")
    }

    /// A cluster's bytes for one version: the cluster and the version, repeated.
    static func content(cluster: Int, version: Int, _ size: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        for i in stride(from: 0, to: size, by: 8) {
            withUnsafeBytes(of: UInt32(cluster).littleEndian) { bytes.replaceSubrange(i..<i + 4, with: $0) }
            withUnsafeBytes(of: UInt32(version).littleEndian) { bytes.replaceSubrange(i + 4..<i + 8, with: $0) }
        }
        return bytes
    }

    /// The version a cluster's bytes hold; nil if they are not one version's whole content (a torn write).
    static func version(of bytes: [UInt8], cluster: Int) -> Int? {
        guard bytes.count >= 8 else { return nil }
        let version = Int(UInt32(bytes[4]) | UInt32(bytes[5]) << 8 | UInt32(bytes[6]) << 16 | UInt32(bytes[7]) << 24)
        return bytes == content(cluster: cluster, version: version, bytes.count) ? version : nil
    }

    /// Per cluster, the last version whose write started and the last acknowledged.
    final class Versions: Sendable {
        private let state: Mutex<(started: [Int], acked: [Int])>
        init(clusters: Int) { state = Mutex((Array(repeating: 0, count: clusters), Array(repeating: 0, count: clusters))) }
        func start(_ k: Int, _ version: Int) { state.withLock { $0.started[k] = version } }
        func ack(_ k: Int, _ version: Int) { state.withLock { $0.acked[k] = version } }
        var started: [Int] { state.withLock { $0.started } }
        var acked: [Int] { state.withLock { $0.acked } }
    }

    final class Stop: Sendable {
        private let flag = Atomic<Bool>(false)
        var stopped: Bool { flag.load(ordering: .relaxed) }
        func stop() { flag.store(true, ordering: .relaxed) }
    }

    /// The held write: whether it reached the hook, then how its wait ended.
    final class Held: Sendable {
        private let state = Mutex<(entered: Bool, value: Bool?)>((false, nil))
        /// True for the first write only.
        func enter() -> Bool { state.withLock { s in defer { s.entered = true }; return !s.entered } }
        func set(_ value: Bool) { state.withLock { $0.value = value } }
        var entered: Bool { state.withLock { $0.entered } }
        var value: Bool? { state.withLock { $0.value } }
    }
}
