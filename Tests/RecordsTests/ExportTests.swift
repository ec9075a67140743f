#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QCOW2
import Records
import Testing
import TestSupport
import VMStore

/// A records tree of version 2 records (a full one and an increment over
/// it), with a kernel and an initrd outside it, for export and refusals.
struct V2Tree {
    let scratch: Scratch
    let tree: String
    let kernel: String
    let initrd: String
    let layout: RAMLayout
    static let page = 4096

    init() throws {
        scratch = try Scratch()
        tree = scratch.file("records")
        kernel = scratch.file("boot/kernel-image")
        initrd = scratch.file("boot/initrd-image")
        try Files.makeDirectory(tree)
        try Files.makeDirectory(scratch.file("boot"))
        try Files.writeAtomically(Array(repeating: 0x4b, count: 9000), to: kernel)
        try Files.writeAtomically(Array(repeating: 0x49, count: 3000), to: initrd)
        layout = try RAMLayout(pageSize: 4096, blocks: [("pc.ram", UInt64(32 * Self.page)), ("pc.bios", UInt64(2 * Self.page))])
    }

    static func content(_ seed: Int) -> [UInt8] { (0..<page).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &* 7 &+ 1) } }

    var spec: VMSpec {
        get throws {
            VMSpec(
                name: try VMName("vm"), memoryMiB: 128, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35",
                boot: .kernel(kernel: kernel, initrd: initrd, append: "console=ttyS0"), disk: nil, bundledGuest: true)
        }
    }

    /// A committed record whose memory holds `pages` (page index → content,
    /// nil = zero) over `parent`.
    func make(id: String, parent: Record?, pages: [Int: [UInt8]?]) throws -> Record {
        let directory = "\(tree)/\(id)"
        try Files.makeDirectory(directory)
        let writer: MemoryImageWriter
        if let parent {
            let digests = try PageDigests.read(path: "\(parent.directory)/\(MemoryImage.digestFileName)", expectedSlots: layout.pageSlots)
            writer = try MemoryImageWriter(
                path: "\(directory)/\(MemoryImage.fileName)", layout: layout, parent: ("../\(parent.id)/\(MemoryImage.fileName)", digests))
        } else {
            writer = try MemoryImageWriter(path: "\(directory)/\(MemoryImage.fileName)", layout: layout)
        }
        for (index, bytes) in pages.sorted(by: { $0.key < $1.key }) {
            if let bytes {
                try bytes.withUnsafeBytes { try writer.page(block: 0, offset: UInt64(index * Self.page), data: $0) }
            } else {
                try writer.page(block: 0, offset: UInt64(index * Self.page), data: nil)
            }
        }
        let summary = try writer.finish()
        try Files.writeAtomically(Array("prologue-\(id)".utf8), to: "\(directory)/memory.prologue")
        try Files.writeAtomically(Array("epilogue-\(id)".utf8), to: "\(directory)/memory.epilogue")
        let memory = RecordManifest.MemoryRecord(
            kind: parent == nil ? .full : .incremental, parent: parent?.id, layout: layout, image: MemoryImage.fileName,
            digests: MemoryImage.digestFileName, prologue: "memory.prologue", epilogue: "memory.epilogue",
            dataPages: summary.dataPages, zeroPages: summary.zeroPages, unchangedPages: summary.unchangedPages)
        let files = try memory.fileNames.map { name in
            let path = "\(directory)/\(name)"
            // As a recorder writes it: the page image has no whole-file hash.
            return RecordManifest.FileEntry(
                name: name, role: .memory, size: try Files.size(path), sha256: name == MemoryImage.fileName ? nil : try FileDigest.sha256(of: path))
        }
        let spec = try spec
        var manifest = RecordManifest(
            id: id, vm: spec.name, createdAt: Timestamp.now(), mechanism: .cevm, parent: nil, spec: spec,
            qemu: .init(version: "10.0.0", package: ""),
            migration: .init(parameters: [:], capabilities: [:], totalTimeMs: nil, downtimeMs: nil, streamBytes: 0),
            timings: .init(requestToPauseMs: 1, guestPauseMs: 2, requestToDurableMs: 3, pausedAt: Timestamp.now(), resumedAt: Timestamp.now()),
            files: files, disk: nil)
        manifest.memory = memory
        manifest.external = ExternalFile.of(spec: spec, cache: IdentityCache(path: nil))
        return try RecordStore.commit(manifest, in: directory)
    }

    /// The full record A and the increment B over it.
    func chain() throws -> (a: Record, b: Record) {
        var first: [Int: [UInt8]?] = [:]
        for p in 0..<20 { first[p] = Self.content(p) }
        let a = try make(id: "20260101-000000-aaaa", parent: nil, pages: first)
        let b = try make(id: "20260101-000100-bbbb", parent: a, pages: [3: Self.content(300), 5: nil, 25: Self.content(25)])
        return (a, b)
    }

    /// What B's chain restores.
    static let expected: [Int: [UInt8]?] = {
        var pages: [Int: [UInt8]?] = [:]
        for p in 0..<20 { pages[p] = content(p) }
        pages[3] = content(300)
        pages[5] = .some(nil)
        pages[25] = content(25)
        return pages
    }()

    func rewriteManifest(_ directory: String, _ edit: (inout [String: Any]) -> Void) throws {
        let path = "\(directory)/manifest.json"
        var object = try JSONSerialization.jsonObject(with: Data(Files.read(path))) as? [String: Any] ?? [:]
        edit(&object)
        try Files.writeAtomically(Array(try JSONSerialization.data(withJSONObject: object)), to: path)
    }

    /// Pages of the record's chain, RAM block only.
    static func pages(of record: Record) throws -> [Int: [UInt8]?] {
        var pages: [Int: [UInt8]?] = [:]
        try MemoryChain(record).reader().forEachPage { block, offset, data in
            if block == 0 { pages[Int(offset) / page] = .some(data.map { Array($0) }) }
        }
        return pages
    }
}

@Suite struct ExportTests {
    func expectRestores(_ record: Record, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let pages = try V2Tree.pages(of: record)
        for p in 0..<32 {
            let want: [UInt8]? = V2Tree.expected[p] ?? nil
            #expect((pages[p] ?? nil) == want, "page \(p)", sourceLocation: sourceLocation)
        }
    }

    @Test func exportIsStandaloneAndRestorableWithTheTreeGone() async throws {
        let tree = try V2Tree()
        let (_, b) = try tree.chain()
        try b.verifyRestorable()
        let destination = tree.scratch.file("export/standalone")
        try Files.makeDirectory(tree.scratch.file("export"))
        let located = try b.locateExternalFiles(overrides: [:], cache: IdentityCache(path: nil))
        let exported = try await RecordExport.export(b, to: destination, located: located, diskSource: nil) { _, _ in
            Issue.record("a record without a disk has none to flatten")
        }
        #expect(exported.directory == destination)
        #expect(exported.id == b.id)
        #expect(exported.manifest.memory?.kind == .full)
        #expect(exported.manifest.memory?.parent == nil)
        #expect(exported.manifest.parent == nil)
        #expect(exported.manifest.spec.boot == .kernel(kernel: "kernel", initrd: "initrd", append: "console=ttyS0"))
        #expect(exported.manifest.external?.map(\.path) == ["kernel", "initrd"])
        #expect(try Files.list(tree.scratch.file("export")) == ["standalone"], "no temporary directory is left")

        // The tree and the boot files go: the export still restores.
        try FileManager.default.removeItem(atPath: tree.tree)
        try FileManager.default.removeItem(atPath: tree.scratch.file("boot"))
        let moved = tree.scratch.file("elsewhere")
        try FileManager.default.moveItem(atPath: destination, toPath: moved)
        let reloaded = try Record.load(directory: moved)
        try reloaded.verifyRestorable()
        try expectRestores(reloaded)
        let found = try reloaded.locateExternalFiles(overrides: [:], cache: IdentityCache(path: nil))
        #expect(found[.kernel] == "\(moved)/kernel")
        #expect(
            reloaded.resolvedBoot(located: found) == .kernel(kernel: "\(moved)/kernel", initrd: "\(moved)/initrd", append: "console=ttyS0"))
    }

    @Test func exportRefusesADirectoryInUse() async throws {
        let tree = try V2Tree()
        let (_, b) = try tree.chain()
        let destination = tree.scratch.file("used")
        try Files.makeDirectory(destination)
        try Files.writeAtomically([1], to: "\(destination)/something")
        await #expect(throws: RecordExport.Failure.self) {
            _ = try await RecordExport.export(b, to: destination, located: [:], diskSource: nil) { _, _ in }
        }
        #expect(try Files.list(destination) == ["something"])
    }

    @Test func aMovedOrRenamedTreeRestores() throws {
        let tree = try V2Tree()
        let (a, b) = try tree.chain()
        // Directories named other than their ids, in a renamed tree.
        let renamed = tree.scratch.file("renamed-tree")
        try FileManager.default.moveItem(atPath: tree.tree, toPath: renamed)
        try FileManager.default.moveItem(atPath: "\(renamed)/\(a.id)", toPath: "\(renamed)/first")
        try FileManager.default.moveItem(atPath: "\(renamed)/\(b.id)", toPath: "\(renamed)/second")
        let record = try Record.load(directory: "\(renamed)/second")
        #expect(record.id == b.id)
        try record.verifyRestorable()
        try expectRestores(record)
    }

    @Test func missingFileIsRefused() throws {
        let tree = try V2Tree()
        let (_, b) = try tree.chain()
        Files.remove("\(b.directory)/memory.epilogue")
        #expect(throws: RecordError.missingFile(path: "\(b.directory)/memory.epilogue")) { _ = try Record.load(directory: b.directory) }
    }

    /// Only the page image may go without a SHA-256: its pages are checked
    /// against the digest file, which must have one.
    @Test(arguments: [MemoryImage.digestFileName, "memory.prologue"])
    func aFileOtherThanThePageImageNeedsItsHash(name: String) throws {
        let tree = try V2Tree()
        let (a, _) = try tree.chain()
        try tree.rewriteManifest(a.directory) { object in
            var files = object["files"] as? [[String: Any]] ?? []
            for i in files.indices where files[i]["name"] as? String == name { files[i]["sha256"] = nil }
            object["files"] = files
        }
        #expect {
            _ = try Record.load(directory: a.directory)
        } throws: { error in
            guard case RecordError.corruptManifest(_, let reason) = error else { return false }
            return reason.contains(name) && reason.contains("no SHA-256")
        }
    }

    /// A byte changed in a page image (which has no whole-file hash) is
    /// caught page by page, before anything restores it.
    @Test func aChangedPageOfTheImageIsRefused() throws {
        let tree = try V2Tree()
        let (a, b) = try tree.chain()
        #expect(try Record.load(directory: a.directory).manifest.files.first { $0.name == MemoryImage.fileName }?.sha256 == nil)
        let image = try QCOW2Image.open(path: "\(a.directory)/\(MemoryImage.fileName)", writable: true, backing: .none)
        var page = [UInt8](repeating: 0, count: V2Tree.page)
        try page.withUnsafeMutableBytes { try image.read(into: $0, at: 0) }
        page[100] ^= 0xff
        try image.write(page, at: 0)
        try image.flush()
        try a.verify()  // nothing for the whole-file pass to see
        #expect {
            try b.verifyRestorable()
        } throws: { error in
            "\(error)".contains("does not match its digest")
        }
    }

    @Test func truncatedPageImageIsRefused() throws {
        let tree = try V2Tree()
        let (a, _) = try tree.chain()
        let image = "\(a.directory)/\(MemoryImage.fileName)"
        let size = try Files.size(image)
        #expect(truncate(image, off_t(size - 4096)) == 0)
        #expect(throws: RecordError.sizeMismatch(path: image, expected: size, actual: size - 4096)) {
            _ = try Record.load(directory: a.directory)
        }
        // And a parent's truncated image refuses its child's restore.
        let child = try Record.load(directory: "\(tree.tree)/20260101-000100-bbbb")
        #expect(throws: RecordError.self) { try child.verifyRestorable() }
    }

    @Test func wrongChecksumIsRefused() throws {
        let tree = try V2Tree()
        let (a, b) = try tree.chain()
        // Same size, other bytes, in the parent: the child's restore is refused.
        let prologue = "\(a.directory)/memory.prologue"
        var bytes = try Files.read(prologue)
        bytes[0] ^= 0xff
        try Files.writeAtomically(bytes, to: prologue)
        #expect {
            try b.verifyRestorable()
        } throws: { error in
            guard case RecordError.checksumMismatch(let path, _, _) = error else { return false }
            return path == prologue
        }
    }

    @Test func aLoopingChainIsRefused() throws {
        let tree = try V2Tree()
        let (a, b) = try tree.chain()
        try tree.rewriteManifest(a.directory) { object in
            guard var memory = object["memory"] as? [String: Any] else { return }
            memory["kind"] = "incremental"
            memory["parent"] = b.id
            object["memory"] = memory
        }
        #expect {
            try Record.load(directory: b.directory).verifyRestorable()
        } throws: { error in
            "\(error)".contains("loops")
        }
    }

    @Test func aParentOutsideTheTreeIsRefused() throws {
        let tree = try V2Tree()
        let (_, b) = try tree.chain()
        let alone = tree.scratch.file("alone")
        try Files.makeDirectory(alone)
        try FileManager.default.moveItem(atPath: b.directory, toPath: "\(alone)/\(b.id)")
        #expect {
            try Record.load(directory: "\(alone)/\(b.id)").verifyRestorable()
        } throws: { error in
            "\(error)".contains("is not in \(alone)")
        }
        // A parent id that is a path is refused as it loads.
        try tree.rewriteManifest("\(alone)/\(b.id)") { object in
            guard var memory = object["memory"] as? [String: Any] else { return }
            memory["parent"] = "../records/20260101-000000-aaaa"
            object["memory"] = memory
        }
        #expect(throws: RecordError.self) { _ = try Record.load(directory: "\(alone)/\(b.id)") }
    }

    @Test func aDifferentExternalFileIsRefusedAndAMovedCopyIsFound() throws {
        let tree = try V2Tree()
        let (_, b) = try tree.chain()
        let cache = IdentityCache(path: nil)
        let kernel = try #require(b.manifest.external?.first { $0.role == .kernel })
        // Moved: missing where recorded, named by its role.
        let copy = tree.scratch.file("copy-of-kernel")
        try FileManager.default.moveItem(atPath: tree.kernel, toPath: copy)
        #expect(throws: ExternalFileError.missing(role: .kernel, path: tree.kernel)) {
            _ = try b.locateExternalFiles(overrides: [:], cache: cache)
        }
        // Pointed at the moved copy: found and used.
        let found = try b.locateExternalFiles(overrides: [.kernel: copy], cache: cache)
        #expect(found[.kernel] == copy)
        if case .kernel(let path, _, _) = b.resolvedBoot(located: found) { #expect(path == copy) } else { Issue.record("no kernel boot") }
        // A different file: refused, with the role, the path and both digests.
        try Files.writeAtomically(Array(repeating: 0x4c, count: 9000), to: copy)
        let other = try FileDigest.sha256(of: copy)
        #expect(
            throws: ExternalFileError.differs(
                role: .kernel, path: copy, expectedSize: kernel.size, actualSize: 9000, expected: kernel.sha256, actual: other)
        ) { _ = try b.locateExternalFiles(overrides: [.kernel: copy], cache: cache) }
        let message = "\(ExternalFileError.differs(role: .kernel, path: copy, expectedSize: 1, actualSize: 2, expected: "e", actual: "a"))"
        #expect(message.contains("kernel") && message.contains(copy))
    }

    @Test func identityCacheHashesAFileOncePerVersion() throws {
        let scratch = try Scratch()
        let file = scratch.file("base.img")
        try Files.writeAtomically(Array(repeating: 1, count: 5000), to: file)
        let cache = IdentityCache(path: scratch.file("identities.json"))
        let first = try #require(try cache.identity(of: file))
        #expect(first.sha256 == (try FileDigest.sha256(of: file)))
        // Poison the cached digest: while the file is unchanged the cache answers.
        let cached = try Files.readString(scratch.file("identities.json"))
        try Files.writeAtomically(Array(cached.replacingOccurrences(of: first.sha256, with: String(repeating: "0", count: 64)).utf8), to: scratch.file("identities.json"))
        #expect(try cache.identity(of: file)?.sha256 == String(repeating: "0", count: 64))
        // A new version of the file (new inode, mtime): hashed again.
        try Files.writeAtomically(Array(repeating: 2, count: 5000), to: file)
        #expect(try cache.identity(of: file)?.sha256 == (try FileDigest.sha256(of: file)))
        #expect(try cache.identity(of: scratch.file("absent"))?.sha256 == nil)
    }
}
