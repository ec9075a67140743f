import CEVMSystem
import Foundation
import QCOW2
import TestSupport
import Testing
import VMStore

@testable import Records

/// Retention on version 2 records: memory chains merge as disk chains do,
/// each independently of the other, and a merge stopped after any of its
/// steps is finished by `recover` with every kept record restoring the same
/// pages and disk bytes.
@Suite struct ChainRetentionTests {
    static let page = 4096
    static let diskSize = 1 << 20

    /// How each record builds on the one before it.
    struct Shape {
        var memoryIncremental: Bool
        var diskIncremental: Bool
    }

    struct Chain {
        let scratch: Scratch
        let store: RecordStore
        var ids: [String] = []
        /// What each record restores: every page (nil: zero) and its disk, whole.
        var pages: [String: [[UInt8]?]] = [:]
        var disks: [String: [UInt8]] = [:]
        let layout: RAMLayout

        /// Record 0 is full in both; record i > 0 is shaped by `shapes[i - 1]`.
        init(shapes: [Shape], seed: UInt64) throws {
            scratch = try Scratch()
            store = RecordStore(directory: scratch.file("records"))
            layout = try RAMLayout(pageSize: 4096, blocks: [("pc.ram", UInt64(96 * Self.pageSize)), ("pc.bios", UInt64(4 * Self.pageSize))])
            var random = SeededRandom(seed: seed)
            try writeFile(scratch.file("b.raw"), (0..<ChainRetentionTests.diskSize).map { _ in UInt8.random(in: 0...255, using: &random) })
            try must(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", scratch.file("b.raw"), scratch.file("b.qcow2")])
            let spec = VMSpec(
                name: try VMName("v"), memoryMiB: 64, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35",
                boot: .disk,
                disk: .init(base: scratch.file("b.qcow2"), baseFormat: "qcow2", sizeBytes: Int64(ChainRetentionTests.diskSize), createdByCEVM: false),
                bundledGuest: false)
            var previous: Record?
            for i in 0...shapes.count {
                let shape = i == 0 ? Shape(memoryIncremental: false, diskIncremental: false) : shapes[i - 1]
                let id = "20260101-00000\(i)-000\(i)"
                let directory = try store.newRecordDirectory(id: id)
                // Memory: a page image over the previous one's, or full.
                var parent: (imageName: String, digests: PageDigests)?
                if shape.memoryIncremental, let previous, let memory = previous.manifest.memory {
                    parent = ("../\(previous.id)/\(memory.image)", try PageDigests.read(path: "\(previous.directory)/\(memory.digests)", expectedSlots: layout.pageSlots))
                }
                let writer = try MemoryImageWriter(path: "\(directory)/\(MemoryImage.fileName)", layout: layout, parent: parent)
                for _ in 0..<(i == 0 ? 90 : 30) {
                    let block = Int.random(in: 0...9, using: &random) == 0 ? 1 : 0
                    let pages = Int(layout.blocks[block].length) / ChainRetentionTests.page
                    let offset = UInt64(Int.random(in: 0..<pages, using: &random) * ChainRetentionTests.page)
                    if Int.random(in: 0...4, using: &random) == 0 {
                        try writer.page(block: block, offset: offset, data: nil)
                    } else {
                        let bytes = (0..<ChainRetentionTests.page).map { _ in UInt8.random(in: 0...255, using: &random) }
                        try bytes.withUnsafeBytes { try writer.page(block: block, offset: offset, data: $0) }
                    }
                }
                let summary = try writer.finish()
                try writeFile("\(directory)/memory.prologue", [1, 2, 3])
                try writeFile("\(directory)/memory.epilogue", [4, 5])
                // Disk: an overlay over the previous record's (named relatively) or the base.
                let disk = "\(directory)/disk.qcow2"
                let diskParent = shape.diskIncremental ? previous : nil
                let backing = diskParent.map { "../\($0.id)/disk.qcow2" } ?? scratch.file("b.qcow2")
                let image = try QCOW2Image.createOverlay(path: disk, backingFile: backing, clusterBits: 12)
                for _ in 0..<30 {
                    let offset = Int.random(in: 0..<ChainRetentionTests.diskSize - 9000, using: &random)
                    if Int.random(in: 0...5, using: &random) == 0 {
                        try image.writeZeroes(at: UInt64(offset & ~4095), count: 8192)
                    } else {
                        try image.write((0..<Int.random(in: 1...9000, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }, at: UInt64(offset))
                    }
                }
                try image.flush()
                var files: [RecordManifest.FileEntry] = []
                for name in [MemoryImage.fileName, MemoryImage.digestFileName, "memory.prologue", "memory.epilogue"] {
                    let path = "\(directory)/\(name)"
                    files.append(.init(name: name, role: .memory, size: try Files.size(path), sha256: try FileDigest.sha256(of: path)))
                }
                files.append(.init(name: "disk.qcow2", role: .disk, size: try Files.size(disk), sha256: try FileDigest.sha256(of: disk)))
                var manifest = RecordManifest(
                    id: id, vm: spec.name, createdAt: "2026-01-01T00:00:00.000000Z", mechanism: .cevm, parent: diskParent?.id, spec: spec,
                    qemu: .init(version: "10.0", package: ""),
                    migration: .init(parameters: [:], capabilities: [:], totalTimeMs: nil, downtimeMs: nil, streamBytes: 3),
                    timings: .init(requestToPauseMs: 0, guestPauseMs: 1, requestToDurableMs: 2, pausedAt: "x", resumedAt: "y"),
                    files: files,
                    disk: .init(file: "disk.qcow2", kind: diskParent == nil ? .full : .incremental, backing: backing, backingFormat: "qcow2"))
                manifest.memory = .init(
                    kind: parent == nil ? .full : .incremental, parent: parent == nil ? nil : previous?.id, layout: layout,
                    image: MemoryImage.fileName, digests: MemoryImage.digestFileName, prologue: "memory.prologue", epilogue: "memory.epilogue",
                    dataPages: summary.dataPages, zeroPages: summary.zeroPages, unchangedPages: summary.unchangedPages)
                let record = try RecordStore.commit(manifest, in: directory)
                pages[id] = try Self.pages(of: record)
                disks[id] = try QCOW2Image.open(path: disk).read(at: 0, count: ChainRetentionTests.diskSize)
                ids.append(id)
                previous = record
            }
        }

        static var pageSize: Int { ChainRetentionTests.page }

        static func pages(of record: Record) throws -> [[UInt8]?] {
            var out: [[UInt8]?] = []
            try MemoryChain(record).reader().forEachPage { _, _, data in out.append(data.map { Array($0) }) }
            return out
        }

        func record(_ id: String) throws -> Record { try Record.load(directory: "\(store.directory)/\(id)") }

        /// The record restores what it did when it was taken, its files
        /// match its manifest, its images are clean, its page counts are its
        /// image's.
        func expectIntact(_ id: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            let record = try record(id)
            try record.verify()
            try record.verifyDiskChain()
            #expect(try Self.pages(of: record) == pages[id], "\(id) restores the same pages", sourceLocation: sourceLocation)
            let disk = try #require(record.diskPath)
            #expect(try QCOW2Image.open(path: disk).read(at: 0, count: ChainRetentionTests.diskSize) == disks[id], "\(id)'s disk reads what it read", sourceLocation: sourceLocation)
            try expectClean(disk, sourceLocation: sourceLocation)
            let memory = try #require(record.manifest.memory)
            let image = "\(record.directory)/\(memory.image)"
            try expectClean(image, sourceLocation: sourceLocation)
            let counts = try Retention.pageCounts(image: image, layout: memory.layout)
            #expect(counts.data == memory.dataPages && counts.zero == memory.zeroPages, sourceLocation: sourceLocation)
            #expect(memory.dataPages + memory.zeroPages + memory.unchangedPages == memory.layout.guestPages, sourceLocation: sourceLocation)
            if memory.kind == .full {
                // No backing: every page with content is a data cluster, and
                // no zero page became one (absorb keeps zero clusters zero).
                #expect(memory.dataPages == (pages[id] ?? []).filter { $0 != nil }.count, sourceLocation: sourceLocation)
            }
            // The headers name what the manifest says, relatively within the tree.
            let memoryHeader = try QCOW2Image.open(path: image, backing: .none).header
            #expect(memoryHeader.backingFile == memory.parent.map { "../\($0)/\(MemoryImage.fileName)" }, sourceLocation: sourceLocation)
            let diskHeader = try QCOW2Image.open(path: disk, backing: .none).header
            #expect(diskHeader.backingFile == record.manifest.disk?.backing, sourceLocation: sourceLocation)
            #expect((record.manifest.parent == nil) == (record.manifest.disk?.kind == .full), sourceLocation: sourceLocation)
        }
    }

    static let shapes: [[Shape]] = [
        // Both chains incremental.
        [Shape(memoryIncremental: true, diskIncremental: true), Shape(memoryIncremental: true, diskIncremental: true), Shape(memoryIncremental: true, diskIncremental: true)],
        // The chains split: memory incremental over a disk-full record, and the other way.
        [Shape(memoryIncremental: true, diskIncremental: false), Shape(memoryIncremental: false, diskIncremental: true), Shape(memoryIncremental: true, diskIncremental: true)],
        [Shape(memoryIncremental: false, diskIncremental: true), Shape(memoryIncremental: true, diskIncremental: false), Shape(memoryIncremental: true, diskIncremental: true)],
    ]

    @Test(arguments: 0..<3)
    func keepingTheNewestMergesBothChains(shape: Int) async throws {
        let chain = try Chain(shapes: Self.shapes[shape], seed: UInt64(10 + shape))
        let outcome = try await Retention.apply(keep: 2, store: chain.store)
        #expect(outcome.removed == Array(chain.ids.prefix(2)))
        #expect(Set(chain.store.list().map(\.id)) == Set(chain.ids.suffix(2)))
        for id in chain.ids.suffix(2) { try chain.expectIntact(id) }
        let third = try chain.record(chain.ids[2])
        #expect(third.manifest.memory?.parent == nil && third.manifest.memory?.kind == .full)
        #expect(third.manifest.parent == nil && third.manifest.disk?.backing == chain.scratch.file("b.qcow2"))
        #expect(try await Retention.apply(keep: 2, store: chain.store) == Retention.Outcome())
        _ = try await Retention.apply(keep: 1, store: chain.store)
        try chain.expectIntact(chain.ids[3])
        #expect(try chain.record(chain.ids[3]).manifest.memory?.kind == .full)
    }

    /// A record a group names is never removed; the records around it go
    /// (merged into their children as usual) and every kept one restores.
    @Test func aRecordAGroupNamesIsKept() async throws {
        let chain = try Chain(shapes: Self.shapes[0], seed: 31)
        let grouped = chain.ids[1]
        let outcome = try await Retention.apply(keep: 1, store: chain.store, protected: [grouped])
        #expect(outcome.removed == [chain.ids[0], chain.ids[2]])
        #expect(Set(chain.store.list().map(\.id)) == [grouped, chain.ids[3]])
        try chain.expectIntact(grouped)
        try chain.expectIntact(chain.ids[3])
    }

    /// Stopped after each step of the merge of record 1 into record 2 (and
    /// of the parent's removal): recover, then the next pass, leave every
    /// kept record as it was.
    @Test(arguments: Retention.Step.allCases)
    func aMergeStoppedAfterAnyStepIsFinished(step: Retention.Step) async throws {
        for (index, shapes) in Self.shapes.enumerated() {
            let chain = try Chain(shapes: Array(shapes.prefix(2)), seed: UInt64(20 + index))
            var stopped = false
            do {
                _ = try await Retention.apply(keep: 2, store: chain.store, stopAfter: step)
            } catch let error as Retention.Stopped {
                #expect(error.after == step)
                stopped = true
            }
            // Both chains link records 0 and 1 in the first shape: every step runs.
            #expect(stopped || index != 0, "step \(step) never ran")
            try await Retention.recover(store: chain.store)
            RecordStore(directory: chain.store.directory).removeUncommitted()
            for id in chain.ids.suffix(2) { try chain.expectIntact(id) }
            _ = try await Retention.apply(keep: 2, store: chain.store)
            #expect(Set(chain.store.list().map(\.id)) == Set(chain.ids.suffix(2)), "shape \(index)")
            for id in chain.ids.suffix(2) { try chain.expectIntact(id) }
            for id in chain.ids { #expect(!Files.exists("\(chain.store.directory)/\(id)/\(Retention.journalName)")) }
        }
    }

    /// Half of the parent's memory clusters copied, then a crash: recover
    /// copies the rest (a zero cluster stays one) and rebases.
    @Test func aMemoryAbsorbStoppedHalfwayIsFinished() async throws {
        let chain = try Chain(shapes: [Shape(memoryIncremental: true, diskIncremental: false), Shape(memoryIncremental: true, diskIncremental: false)], seed: 31)
        let parent = try chain.record(chain.ids[0])
        let child = try chain.record(chain.ids[1])
        try Files.writeAtomically(
            Array(try JSONEncoder().encode(Retention.Journal(parent: parent.id, parentDirectory: parent.directory))),
            to: "\(child.directory)/\(Retention.journalName)")
        let below = try QCOW2Image.open(path: "\(parent.directory)/\(MemoryImage.fileName)", backing: .none)
        let top = try QCOW2Image.open(path: "\(child.directory)/\(MemoryImage.fileName)", writable: true)
        var next: UInt64 = 0
        var copied = 0
        while let k = try below.nextAllocatedCluster(atOrAfter: next), copied < 20 {
            next = k + 1
            if case .unallocated = try top.clusterState(k) {
                try top.write(try below.read(at: k * 4096, count: 4096), at: k * 4096)
                copied += 1
            }
        }
        try top.flush()
        try await Retention.recover(store: chain.store)
        for id in chain.ids.suffix(2) { try chain.expectIntact(id) }
        #expect(try chain.record(chain.ids[1]).manifest.memory?.kind == .full)
        let outcome = try await Retention.apply(keep: 2, store: chain.store)
        #expect(outcome.removed == [chain.ids[0]])
        for id in chain.ids.suffix(2) { try chain.expectIntact(id) }
    }

    /// Relative names: the whole records tree moved and renamed still
    /// restores, disk and memory, and retention works on it there.
    @Test func aMovedRecordsTreeStillOpensAndMerges() async throws {
        var chain = try Chain(shapes: Self.shapes[0], seed: 41)
        let moved = chain.scratch.file("elsewhere/renamed")
        try Files.makeDirectory(chain.scratch.file("elsewhere"))
        #expect(rename(chain.store.directory, moved) == 0)
        chain = Chain(moving: chain, to: RecordStore(directory: moved))
        for id in chain.ids { try chain.expectIntact(id) }
        _ = try await Retention.apply(keep: 2, store: chain.store)
        for id in chain.ids.suffix(2) { try chain.expectIntact(id) }
        #expect(try must(["qemu-img", "info", "--backing-chain", "\(moved)/\(chain.ids[3])/disk.qcow2"]).contains(chain.ids[2]))
    }

    @Test func keepMustBePositive() async throws {
        let chain = try Chain(shapes: [], seed: 3)
        await #expect(throws: RecordError.self) { _ = try await Retention.apply(keep: 0, store: chain.store) }
    }
}

extension ChainRetentionTests.Chain {
    /// The same chain after its records directory moved.
    init(moving other: Self, to store: RecordStore) {
        scratch = other.scratch
        self.store = store
        ids = other.ids
        pages = other.pages
        disks = other.disks
        layout = other.layout
    }
}
