import Foundation
import TestSupport
import Testing
@testable import QCOW2

/// The write ordering of `flush()`: replay every prefix of the host writes
/// (a process killed at that point leaves exactly those in the page cache)
/// and, for power loss, any subset of the writes since the last fdatasync.
/// Each crashed file must pass `qemu-img check` with leaks at most, and
/// every byte acknowledged before the last completed flush must read back.
@Suite struct CrashOrderingTests {
    final class Recorder: @unchecked Sendable {
        let lock = NSLock()
        var events: [IOEvent] = []
        func add(_ event: IOEvent) { lock.lock(); events.append(event); lock.unlock() }
        var count: Int { lock.lock(); defer { lock.unlock() }; return events.count }
    }

    /// Per 512-byte sector: the content at a flush and the contents written
    /// after it (any of which a crash may leave).
    struct Checkpoint {
        var flushEnd: Int  // index of the first event after the flush
        var model: [UInt8]
    }

    @Test func killAtAnyStepLeavesAConsistentImage() throws {
        let scratch = try Scratch()
        let size = 4 << 20
        let sector = 512
        let below = pattern(size, seed: 41)
        try writeFile(scratch.file("base.raw"), below)
        let path = scratch.file("top.qcow2")
        // 512-byte clusters, 64-bit refcounts: refcount blocks and a
        // refcount-table move happen within a few MiB.
        var image: QCOW2Image? = try QCOW2Image.create(path: path, virtualSize: UInt64(size), clusterBits: 9, refcountOrder: 6, backingFile: "base.raw")
        let original = try readFile(path)
        let recorder = Recorder()
        image?.setObserver { recorder.add($0) }

        var model = below
        var checkpoints = [Checkpoint(flushEnd: 0, model: model)]
        // After a checkpoint, per sector, every content it may hold after a crash.
        var laterContents: [(event: Int, sector: Int, bytes: [UInt8])] = []
        var flushRanges: [Range<Int>] = []
        var rng = SeededRandom(seed: 7)
        func record(_ start: Int, _ count: Int) {
            var s = start / sector
            while s * sector < start + count {
                laterContents.append((recorder.count, s, Array(model[(s * sector)..<((s + 1) * sector)])))
                s += 1
            }
        }
        for batch in 0..<8 {
            guard let current = image else { break }
            for op in 0..<(batch < 4 ? 12 : 6) {
                let count = Int.random(in: 1...(batch < 4 ? 200_000 : 3000), using: &rng)
                let offset = Int.random(in: 0...(size - count), using: &rng)
                switch op % 6 {
                case 4:
                    try current.writeZeroes(at: UInt64(offset), count: UInt64(count))
                    model.replaceSubrange(offset..<(offset + count), with: [UInt8](repeating: 0, count: count))
                case 5:
                    try current.discard(at: UInt64(offset), count: UInt64(count))
                    var c = (offset + sector - 1) / sector
                    while (c + 1) * sector <= offset + count {
                        model.replaceSubrange((c * sector)..<((c + 1) * sector), with: below[(c * sector)..<((c + 1) * sector)])
                        c += 1
                    }
                default:
                    let data = pattern(count, seed: UInt8(batch * 16 + op))
                    try current.write(data, at: UInt64(offset))
                    model.replaceSubrange(offset..<(offset + count), with: data)
                }
                // Every content the written range may show after a crash.
                record(offset, count)
            }
            let start = recorder.count
            try current.flush()
            flushRanges.append(start..<recorder.count)
            checkpoints.append(Checkpoint(flushEnd: recorder.count, model: model))
        }
        #expect(image?.header.refcountTableOffset != 0x200, "the workload must move the refcount table")
        image = nil
        let events = recorder.events
        #expect(events.count > 100)

        // Crash points: in every flush, each step around an fdatasync plus a
        // sample of its other writes; and a sample of the data writes.
        var points: Set<Int> = [events.count]
        for range in flushRanges {
            let inside = Array(range)
            for k in inside where { if case .sync = events[k] { true } else { false } }() {
                points.insert(k)
                points.insert(k + 1)
            }
            if let k = inside.randomElement(using: &rng) { points.insert(k) }
        }
        for _ in 0..<6 { points.insert(Int.random(in: 0..<events.count, using: &rng)) }
        // Sector contents written after each checkpoint, by sector.
        var allowedCache: [Int: [Int: [[UInt8]]]] = [:]
        func allowedAfter(_ flushEnd: Int) -> [Int: [[UInt8]]] {
            if let cached = allowedCache[flushEnd] { return cached }
            var map: [Int: [[UInt8]]] = [:]
            for entry in laterContents where entry.event >= flushEnd { map[entry.sector, default: []].append(entry.bytes) }
            allowedCache[flushEnd] = map
            return map
        }

        var state = original
        func apply(_ event: IOEvent, to bytes: inout [UInt8]) {
            guard case .write(let offset, let data) = event else { return }
            let end = Int(offset) + data.count
            if bytes.count < end { bytes += [UInt8](repeating: 0, count: end - bytes.count) }
            bytes.replaceSubrange(Int(offset)..<end, with: data)
        }
        func verify(_ bytes: [UInt8], crashAt point: Int, label: String) throws {
            let crashed = scratch.file("crashed.qcow2")
            try writeFile(crashed, bytes)
            let check = try qemuCheck(crashed)
            #expect(check.status == 0 || check.status == 3, "\(label): qemu-img check: \(check.output)")
            guard let last = checkpoints.last(where: { $0.flushEnd <= point }) else { return }
            let read = try QCOW2Image.open(path: crashed).read(at: 0, count: size)
            let later = allowedAfter(last.flushEnd)
            var bad = 0
            if read != last.model {
                read.withUnsafeBytes { got in
                    last.model.withUnsafeBytes { flushed in
                        for s in 0..<(size / sector) {
                            let at = s * sector
                            if memcmp(got.baseAddress! + at, flushed.baseAddress! + at, sector) == 0 { continue }
                            let ok = later[s]?.contains { bytes in bytes.withUnsafeBytes { memcmp($0.baseAddress!, got.baseAddress! + at, sector) == 0 } } ?? false
                            if !ok { bad += 1 }
                        }
                    }
                }
            }
            #expect(bad == 0, "\(label): \(bad) sector(s) hold neither the flushed content nor a later write")
        }
        var tested = 0
        for k in 0...events.count {
            if points.contains(k) {
                try verify(state, crashAt: k, label: "kill after \(k) of \(events.count) I/O steps")
                tested += 1
            }
            if k < events.count { apply(events[k], to: &state) }
        }
        print("crash ordering: \(events.count) I/O steps, \(tested) kill points")
        #expect(tested > 30)

        // Power loss inside a flush: all writes before the last fdatasync,
        // any subset of the writes after it.
        var epochStart = 0
        var durable = original
        var subsetsTested = 0
        for (index, event) in events.enumerated() where {
            if case .sync = event { true } else { false }
        }() {
            let epoch = Array(events[epochStart..<index])
            let inFlush = flushRanges.contains { $0.contains(index) }
            if inFlush && epoch.count > 1 && subsetsTested < 16 {
                for _ in 0..<2 {
                    var bytes = durable
                    for e in epoch where Bool.random(using: &rng) { apply(e, to: &bytes) }
                    try verify(bytes, crashAt: epochStart, label: "power loss in epoch \(epochStart)..<\(index)")
                    subsetsTested += 1
                }
            }
            for e in epoch { apply(e, to: &durable) }
            epochStart = index + 1
        }
        #expect(subsetsTested > 10)
    }
}
