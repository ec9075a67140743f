#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Records
import Testing
import VMStore

/// Builds committed records in a temporary directory, then damages them.
struct RecordFixture: ~Copyable {
    let root: String
    let store: RecordStore

    init() throws {
        root = "/tmp/cevm-records-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Files.makeDirectory(root)
        store = RecordStore(directory: "\(root)/records")
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    func make(id: String = RecordStore.newID(), memory: [UInt8] = Array(repeating: 7, count: 5000)) throws -> Record {
        let directory = try store.newRecordDirectory(id: id)
        let spool = try StreamSpool(path: "\(directory)/memory.mig")
        try memory.withUnsafeBytes { try spool.write($0) }
        let memoryEntry = try spool.finish(role: .memory)
        let disk = Array("QFI\u{fb}disk".utf8)
        try Files.writeAtomically(disk, to: "\(directory)/disk.qcow2")
        let diskEntry = RecordManifest.FileEntry(
            name: "disk.qcow2", role: .disk, size: Int64(disk.count), sha256: try FileDigest.sha256(of: "\(directory)/disk.qcow2"))
        let name = try VMName("vm")
        let spec = VMSpec(
            name: name, memoryMiB: 128, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35",
            boot: .kernel(kernel: "/k", initrd: "/i", append: ""), disk: nil, bundledGuest: true)
        let manifest = RecordManifest(
            id: id, vm: name, createdAt: Timestamp.now(), mechanism: .stopAndSave, parent: nil, spec: spec,
            qemu: .init(version: "7.2.22", package: ""),
            migration: .init(parameters: ["max-bandwidth": 1 << 40], capabilities: [:], totalTimeMs: 10, downtimeMs: nil, streamBytes: memoryEntry.size),
            timings: .init(requestToPauseMs: 1, guestPauseMs: 2, requestToDurableMs: 3, pausedAt: Timestamp.now(), resumedAt: Timestamp.now()),
            files: [memoryEntry, diskEntry],
            disk: .init(file: "disk.qcow2", kind: .full, backing: "/b", backingFormat: "qcow2"))
        return try RecordStore.commit(manifest, in: directory)
    }

    func rewriteManifest(_ record: Record, _ edit: (inout [String: Any]) -> Void) throws {
        let path = "\(record.directory)/manifest.json"
        var object = try JSONSerialization.jsonObject(with: Data(Files.read(path))) as? [String: Any] ?? [:]
        edit(&object)
        try Files.writeAtomically(Array(try JSONSerialization.data(withJSONObject: object)), to: path)
    }
}

@Suite struct RecordTests {
    /// A tee's spool is hashed from the file after the stream; the digest is
    /// the same as hashing while writing, and as hashing the file later.
    @Test func bothHashingModesGiveTheFilesDigest() throws {
        let fixture = try RecordFixture()
        let root = fixture.root
        try Files.makeDirectory("\(root)/spools")
        let chunks = (0..<5).map { index in (0..<(300_000 + index * 7919)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) } }
        var digests: [String] = []
        for (name, hashing) in [("inline", StreamSpool.Hashing.whileWriting), ("after", .atFinish)] {
            let path = "\(root)/spools/\(name).mig"
            let spool = try StreamSpool(path: path, hashing: hashing)
            for chunk in chunks { try chunk.withUnsafeBytes { try spool.write($0) } }
            let entry = try spool.finish(role: .memory)
            #expect(entry.size == Int64(chunks.reduce(0) { $0 + $1.count }))
            #expect(entry.sha256 == (try FileDigest.sha256(of: path)))
            digests.append(try #require(entry.sha256))
        }
        #expect(digests[0] == digests[1])
    }

    /// A scratch spool (the part of a stream a parser has no room for in
    /// memory) holds, in order, what it was written and what a pipe spliced
    /// into it, has no manifest entry, and is removed.
    @Test func aScratchSpoolHoldsWhatItTook() throws {
        let fixture = try RecordFixture()
        try Files.makeDirectory("\(fixture.root)/spools")
        let path = "\(fixture.root)/spools/scratch"
        let spool = try StreamSpool(path: path, hashing: .scratch)
        let written = (0..<(3 << 20 | 4321)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        let piped = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        try written.withUnsafeBytes { try spool.write($0) }
        let pipe = try Splice.pipe(capacity: 1 << 16)
        defer { close(pipe.read); close(pipe.write) }
        var sent = 0
        while sent < piped.count {
            let n = min(pipe.capacity, piped.count - sent)
            try Files.writeAll(pipe.write, piped[sent..<(sent + n)], subject: "pipe")
            try spool.append(fromPipe: pipe.read, count: n)
            sent += n
        }
        #expect(spool.bytes == Int64(written.count + piped.count))
        #expect(try Files.read(path) == written + piped)
        #expect(throws: RecordError.self) { try spool.finish(role: .memory) }
        spool.remove()
        #expect(!Files.exists(path))
        // A spool hashed as it is written cannot take bytes it never sees.
        let hashed = try StreamSpool(path: "\(fixture.root)/spools/hashed", hashing: .whileWriting)
        try Files.writeAll(pipe.write, piped[0..<10], subject: "pipe")
        #expect(throws: RecordError.self) { try hashed.append(fromPipe: pipe.read, count: 10) }
    }

    @Test func manifestRoundTrips() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        let loaded = try Record.load(directory: record.directory)
        #expect(loaded.manifest == record.manifest)
        // No page image: a version 1 record (memory as QEMU's stream).
        #expect(loaded.manifest.formatVersion == 1)
        try loaded.verify()
        #expect(fixture.store.list().map(\.id) == [record.id])
    }

    @Test func aDirectoryWithoutManifestIsNotARecord() throws {
        let fixture = try RecordFixture()
        let kept = try fixture.make()
        let partial = try fixture.store.newRecordDirectory(id: "partial")
        try Files.writeAtomically([1, 2, 3], to: "\(partial)/memory.mig")
        #expect(throws: RecordError.missingManifest(directory: partial)) { try Record.load(directory: partial) }
        #expect(fixture.store.list().map(\.id) == [kept.id])
        fixture.store.removeUncommitted()
        #expect(!Files.exists(partial))
        #expect(Files.exists(kept.directory), "cleaning up must never touch a committed record")
    }

    @Test func corruptManifest() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        try Files.writeAtomically(Array("{\"format\": \"cevm-record\", \"formatVer".utf8), to: "\(record.directory)/manifest.json")
        #expect(throws: RecordError.self) { try Record.load(directory: record.directory) }
        do { _ = try Record.load(directory: record.directory) } catch { #expect("\(error)".contains("corrupt")) }
    }

    @Test func unknownFormatVersionIsNamed() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        try fixture.rewriteManifest(record) { $0["formatVersion"] = 3 }
        #expect(throws: RecordError.unsupportedFormat(path: "\(record.directory)/manifest.json", format: "cevm-record", version: 3)) {
            try Record.load(directory: record.directory)
        }
    }

    @Test func versionAndMemoryDescriptionMustAgree() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        // Version 2 names its memory's pages; a version 2 claim without them is corrupt.
        try fixture.rewriteManifest(record) { $0["formatVersion"] = 2 }
        #expect(throws: RecordError.self) { try Record.load(directory: record.directory) }
        do { _ = try Record.load(directory: record.directory) } catch { #expect("\(error)".contains("memory description")) }
    }

    @Test func checksumMismatch() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        // Same size, one byte changed: only the checksum can tell.
        let fd = open("\(record.directory)/memory.mig", O_WRONLY)
        var byte: UInt8 = 8
        #expect(pwrite(fd, &byte, 1, 100) == 1)
        close(fd)
        let loaded = try Record.load(directory: record.directory)
        do {
            try loaded.verify()
            Issue.record("a damaged memory file passed verification")
        } catch let error as RecordError {
            guard case .checksumMismatch(let path, _, _) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(path.hasSuffix("memory.mig"))
        }
    }

    @Test func truncatedMemoryStream() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        #expect(truncate("\(record.directory)/memory.mig", 1000) == 0)
        #expect(throws: RecordError.sizeMismatch(path: "\(record.directory)/memory.mig", expected: 5000, actual: 1000)) {
            try Record.load(directory: record.directory)
        }
        #expect(RecordError.sizeMismatch(path: "m", expected: 5000, actual: 1000).description.contains("truncated"))
    }

    @Test func missingFile() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        unlink("\(record.directory)/disk.qcow2")
        #expect(throws: RecordError.missingFile(path: "\(record.directory)/disk.qcow2")) { try Record.load(directory: record.directory) }
    }

    @Test func fileNamesCannotEscapeTheRecord() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        try fixture.rewriteManifest(record) { object in
            var files = object["files"] as? [[String: Any]] ?? []
            files[0]["name"] = "../../etc/passwd"
            object["files"] = files
        }
        #expect(throws: RecordError.invalidFileName("../../etc/passwd")) { try Record.load(directory: record.directory) }
    }

    /// A record is what its manifest says, wherever it lies: a directory
    /// copied or renamed still loads (records are movable), but the ids it
    /// holds must be plain names.
    @Test func aRenamedRecordLoadsAndIdsArePlain() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        let renamed = "\(fixture.root)/elsewhere-under-another-name"
        try FileManager.default.moveItem(atPath: record.directory, toPath: renamed)
        let moved = try Record.load(directory: renamed)
        #expect(moved.id == record.id)
        try moved.verify()
        try fixture.rewriteManifest(moved) { $0["id"] = "../other" }
        #expect(throws: RecordError.self) { try Record.load(directory: renamed) }
        try fixture.rewriteManifest(moved) {
            $0["id"] = record.id
            $0["parent"] = "a/b"
        }
        #expect(throws: RecordError.self) { try Record.load(directory: renamed) }
    }

    @Test func newIDsAreDistinctAndPlain() {
        let ids = (0..<50).map { _ in RecordStore.newID() }
        #expect(ids.allSatisfy { Record.isPlainID($0) && $0.count == 20 })
        #expect(Set(ids).count > 40)
        #expect(!Record.isPlainID("../x") && !Record.isPlainID(".x") && !Record.isPlainID("a/b"))
    }

    @Test func spoolRefusesToOverwrite() throws {
        let fixture = try RecordFixture()
        let record = try fixture.make()
        #expect(throws: RecordError.self) { try StreamSpool(path: "\(record.directory)/memory.mig") }
    }
}
