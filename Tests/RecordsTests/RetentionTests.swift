import CEVMSystem
import Foundation
import QCOW2
import TestSupport
import Testing
import VMStore

@testable import Records

/// Retention on real qcow2 record chains: kept records read the same bytes
/// before and after their parents go, and a merge killed halfway is finished
/// by the next pass.
@Suite struct RetentionTests {
    struct Chain {
        let scratch: Scratch
        let store: RecordStore
        var ids: [String] = []
        /// What each record's disk reads, whole.
        var views: [String: [UInt8]] = [:]

        init(records: Int, seed: UInt64) throws {
            scratch = try Scratch()
            store = RecordStore(directory: scratch.file("records"))
            let size = 1 << 20
            var random = SeededRandom(seed: seed)
            try writeFile(scratch.file("b.raw"), (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) })
            try must(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", scratch.file("b.raw"), scratch.file("b.qcow2")])
            let spec = VMSpec(
                name: try VMName("v"), memoryMiB: 64, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35",
                boot: .disk, disk: .init(base: scratch.file("b.qcow2"), baseFormat: "qcow2", sizeBytes: Int64(size), createdByCEVM: false),
                bundledGuest: false)
            var backing = scratch.file("b.qcow2")
            var parent: String?
            for i in 0..<records {
                let id = "20260101-00000\(i)-000\(i)"
                let directory = try store.newRecordDirectory(id: id)
                let disk = "\(directory)/disk.qcow2"
                let image = try QCOW2Image.createOverlay(path: disk, backingFile: backing, clusterBits: 12)
                for _ in 0..<40 {
                    let offset = Int.random(in: 0..<size - 9000, using: &random)
                    try image.write((0..<Int.random(in: 1...9000, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }, at: UInt64(offset))
                }
                try image.flush()
                try writeFile("\(directory)/memory.mig", [1, 2, 3])
                let manifest = RecordManifest(
                    id: id, vm: spec.name, createdAt: "2026-01-01T00:00:00.000000Z", mechanism: .cevm, parent: parent, spec: spec,
                    qemu: .init(version: "7.2", package: ""),
                    migration: .init(parameters: [:], capabilities: [:], totalTimeMs: nil, downtimeMs: nil, streamBytes: 3),
                    timings: .init(requestToPauseMs: 0, guestPauseMs: 1, requestToDurableMs: 2, pausedAt: "x", resumedAt: "y"),
                    files: [
                        .init(name: "memory.mig", role: .memory, size: 3, sha256: try FileDigest.sha256(of: "\(directory)/memory.mig")),
                        .init(name: "disk.qcow2", role: .disk, size: try Files.size(disk), sha256: try FileDigest.sha256(of: disk)),
                    ],
                    disk: .init(file: "disk.qcow2", kind: parent == nil ? .full : .incremental, backing: backing, backingFormat: "qcow2"))
                _ = try RecordStore.commit(manifest, in: directory)
                views[id] = try QCOW2Image.open(path: disk).read(at: 0, count: size)
                ids.append(id)
                backing = disk
                parent = id
            }
        }

        func expectIntact(_ id: String) throws {
            let record = try Record.load(directory: "\(store.directory)/\(id)")
            try record.verify()
            try record.verifyDiskChain()
            let disk = try #require(record.diskPath)
            #expect(try QCOW2Image.open(path: disk).read(at: 0, count: 1 << 20) == views[id], "\(id) reads what it read")
            try expectClean(disk)
        }
    }

    @Test func keepingTheNewestMergesItsParentsIntoIt() async throws {
        let chain = try Chain(records: 4, seed: 1)
        let outcome = try await Retention.apply(keep: 2, store: chain.store)
        #expect(outcome.removed == Array(chain.ids.prefix(2)))
        #expect(Set(chain.store.list().map(\.id)) == Set(chain.ids.suffix(2)))
        for id in chain.ids.suffix(2) { try chain.expectIntact(id) }
        let third = try Record.load(directory: "\(chain.store.directory)/\(chain.ids[2])")
        #expect(third.manifest.parent == nil && third.manifest.disk?.backing == chain.scratch.file("b.qcow2"))
        #expect(third.manifest.disk?.kind == .full)
        let fourth = try Record.load(directory: "\(chain.store.directory)/\(chain.ids[3])")
        #expect(fourth.manifest.parent == chain.ids[2], "the newest still builds on its kept parent")
        // Nothing more to do.
        #expect(try await Retention.apply(keep: 2, store: chain.store) == Retention.Outcome())
        let last = try await Retention.apply(keep: 1, store: chain.store)
        #expect(last.removed == [chain.ids[2]] && last.merged == [chain.ids[3]])
        try chain.expectIntact(chain.ids[3])
    }

    @Test func aMergeKilledHalfwayIsFinishedByTheNextPass() async throws {
        let chain = try Chain(records: 3, seed: 2)
        let parent = try Record.load(directory: "\(chain.store.directory)/\(chain.ids[0])")
        let child = try Record.load(directory: "\(chain.store.directory)/\(chain.ids[1])")
        // The journal written and half of the parent's clusters copied, then a "crash".
        try Files.writeAtomically(
            Array(try JSONEncoder().encode(Retention.Journal(parent: parent.id, parentDirectory: parent.directory))),
            to: "\(child.directory)/\(Retention.journalName)")
        let top = try QCOW2Image.open(path: try #require(child.diskPath), writable: true)
        let below = try QCOW2Image.open(path: try #require(parent.diskPath))
        var next: UInt64 = 0
        var copied = 0
        while let k = try below.nextAllocatedCluster(atOrAfter: next), copied < 10 {
            next = k + 1
            if case .unallocated = try top.clusterState(k) {
                try top.write(try below.read(at: k * 4096, count: 4096), at: k * 4096)
                copied += 1
            }
        }
        try top.flush()
        // The child's manifest is stale now (size): a plain load refuses it.
        #expect(throws: (any Error).self) { _ = try Record.load(directory: child.directory) }
        try await Retention.recover(store: chain.store)
        try chain.expectIntact(chain.ids[1])
        try chain.expectIntact(chain.ids[2])
        #expect(!Files.exists("\(child.directory)/\(Retention.journalName)"))
        // The next pass removes the parent as usual.
        let outcome = try await Retention.apply(keep: 2, store: chain.store)
        #expect(outcome.removed == [chain.ids[0]])
        for id in chain.ids.suffix(2) { try chain.expectIntact(id) }
    }

    @Test func keepMustBePositive() async throws {
        let chain = try Chain(records: 1, seed: 3)
        await #expect(throws: RecordError.self) { _ = try await Retention.apply(keep: 0, store: chain.store) }
    }
}
