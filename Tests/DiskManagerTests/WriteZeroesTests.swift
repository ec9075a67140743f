import Foundation
import QCOW2
import TestSupport
import Testing

@testable import DiskManager

#if canImport(Glibc)
import Glibc
#endif

/// WRITE_ZEROES (up to 4 GiB, no payload) is done in bounded chunks and
/// never becomes a buffer of zeros: the data matches the model in plain mode
/// and during an integration (across the sweep's cursor, with copy before
/// write into the record), and a 4 GiB one over an 8 GiB sparse disk keeps
/// the process's peak memory where it was.
@Suite struct WriteZeroesTests {
    enum Mode: CaseIterable { case plain, integrating }

    /// A zeroing from inside cluster 100 to inside cluster 700 of 1024
    /// (4 KiB clusters), cut into 64 KiB steps. Integrating, the sweep is
    /// held at cluster 400, so the zeroing spans the cursor: below it the
    /// clusters go to U, above it to T, and each S0 cluster above it first
    /// saves its switch-over content to the record.
    @Test(arguments: Mode.allCases)
    func zeroesAcrossManyClustersMatchTheModel(mode: Mode) async throws {
        var f = try IntegrationRunTests.Fixture(size: 4 << 20, clusterBits: 12, seed: mode == .plain ? 61 : 62)
        let atSwitchOver = f.model
        let t = f.disk.top
        let disk = ManagedDisk(top: t, slowInlineWrite: .milliseconds(1), inlineWritePause: .seconds(1), writeZeroesChunk: 65536)
        let hold = Integration.SweepHold(atCluster: 400)
        var integration: Integration?
        if mode == .integrating {
            let record = try f.newRecord("r.qcow2", backing: f.scratch.file("b.qcow2"))
            integration = try disk.cut(u: try f.newU(), record: record, incremental: false, hooks: .init(sweepHold: hold))
            #expect(await eventually { hold.isReached })
        }
        let cursor = integration.map { _ in Self.firstAllocated(t, atOrAfter: 400) } ?? 400
        let start = 100 * 4096 + 123, end = 700 * 4096 + 77
        if integration != nil {
            #expect(cursor > 400 && cursor < 700, "the zeroing spans the cursor (\(cursor))")
            let s0Above = (cursor + 1..<700).filter { Self.holds(t, $0) }
            #expect(!s0Above.isEmpty, "S0 clusters the sweep has not reached lie in the zeroed range")
        }
        try await disk.writeZeroes(offset: UInt64(start), length: UInt64(end - start))
        f.model.replaceSubrange(start..<end, with: repeatElement(0, count: end - start))
        #expect(disk.largestWriteZeroesStep == 65536)
        #expect(disk.isIntegrating == (mode == .integrating), "still integrating: the zeroing ran through AccessDisk")

        // Reads while the sweep is still held (or in plain mode): the edges
        // and the middle, and all of it, against the model.
        for (offset, length) in [(start - 200, 400), (end - 300, 600), (cursor * 4096 - 10, 8192), (0, f.size)] {
            let got = try await disk.read(offset: UInt64(offset), length: length)
            #expect(got == Array(f.model[offset..<offset + length]), "read \(length) at \(offset)")
        }
        hold.release()
        if let integration {
            let stats = try await integration.wait()
            disk.settle()
            #expect(stats.recordClusters == stats.switchOverClusters)
            try await disk.flush()
            try f.expectImage(f.scratch.file("u.qcow2"), equals: f.model, "u")
            try f.expectImage(f.scratch.file("r.qcow2"), equals: atSwitchOver, "record")
        } else {
            try await disk.flush()
            try f.expectImage(f.scratch.file("t.qcow2"), equals: f.model, "t")
        }
        let all = try await disk.read(offset: 0, length: f.size)
        #expect(all == f.model)
    }

    /// A 4 GiB WRITE_ZEROES over an 8 GiB sparse disk: no step covers more
    /// than `writeZeroesChunk`, and the process's peak resident memory
    /// grows by far less than the request (a buffer of zeros for it would
    /// add 4 GiB). Integrating, the sweep is held at the first cluster, so
    /// the zeroing lands in T above the cursor, copies S0 clusters to the
    /// record first, and the sweep then carries 65536 zero clusters into U.
    @Test(arguments: Mode.allCases)
    func aFourGiBWriteZeroesNeverHoldsItsLengthInMemory(mode: Mode) async throws {
        let scratch = try Scratch()
        let size: UInt64 = 8 << 30
        _ = try QCOW2Image.create(path: scratch.file("b.qcow2"), virtualSize: size)
        let t = try QCOW2Image.createOverlay(path: scratch.file("t.qcow2"), backingFile: scratch.file("b.qcow2"), clusterBits: 16)
        let marks: [UInt64] = [0, (1 << 30) + 5, 3 << 30, (5 << 30) - 2000, (5 << 30) + 100, 7 << 30]
        for (i, at) in marks.enumerated() { try t.write(pattern(1000, seed: UInt8(i + 1)), at: at) }
        try t.flush()
        let disk = ManagedDisk(top: t)
        let hold = Integration.SweepHold(atCluster: 0)
        var integration: Integration?
        if mode == .integrating {
            let u = try QCOW2Image.createOverlay(path: scratch.file("u.qcow2"), backingFile: scratch.file("b.qcow2"), clusterBits: 16)
            let record = try QCOW2Image.createOverlay(path: scratch.file("r.qcow2"), backingFile: scratch.file("b.qcow2"), clusterBits: 16)
            integration = try disk.cut(u: u, record: record, incremental: false, hooks: .init(sweepHold: hold))
            #expect(await eventually { hold.isReached })
        }
        let start: UInt64 = (1 << 30) + 512, length = UInt64(UInt32.max)
        let before = Self.peakResidentBytes()
        try await disk.writeZeroes(offset: start, length: length)
        let growth = Self.peakResidentBytes() - before
        #expect(growth < 512 << 20, "peak resident memory grew by \(growth >> 20) MiB for a \(length >> 20) MiB zeroing")
        #expect(disk.largestWriteZeroesStep > 0 && disk.largestWriteZeroesStep <= 32 << 20)
        #expect(disk.isIntegrating == (mode == .integrating))

        // Each mark, as the model has it: zeros inside start..<start+length.
        func expected(_ i: Int) -> [UInt8] {
            let at = marks[i]
            return pattern(1000, seed: UInt8(i + 1)).enumerated().map { k, byte in
                (start..<start + length).contains(at + UInt64(k)) ? 0 : byte
            }
        }
        for i in marks.indices {
            #expect(try await disk.read(offset: marks[i], length: 1000) == expected(i), "mark \(i)")
        }
        hold.release()
        if let integration {
            let stats = try await integration.wait()
            disk.settle()
            #expect(stats.sweptClusters > 65000, "the zero clusters were carried into U: \(stats)")
            let record = try QCOW2Image.open(path: scratch.file("r.qcow2"), writable: false)
            for i in marks.indices {
                #expect(try record.read(at: marks[i], count: 1000) == pattern(1000, seed: UInt8(i + 1)), "record mark \(i)")
            }
        }
        for i in marks.indices {
            #expect(try await disk.read(offset: marks[i], length: 1000) == expected(i), "mark \(i) after")
        }
        try await disk.flush()
        try expectClean(scratch.file(mode == .integrating ? "u.qcow2" : "t.qcow2"))
    }

    static func peakResidentBytes() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_maxrss * 1024
    }

    static func holds(_ image: QCOW2Image, _ cluster: Int) -> Bool {
        guard let state = try? image.clusterState(UInt64(cluster)) else { return false }
        if case .unallocated = state { return false }
        return true
    }

    static func firstAllocated(_ image: QCOW2Image, atOrAfter cluster: Int) -> Int {
        ((try? image.nextAllocatedCluster(atOrAfter: UInt64(cluster))) ?? nil).map { Int($0) } ?? -1
    }
}

func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return condition()
}
