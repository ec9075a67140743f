#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QCOW2
import VMStore

extension Record {
    /// Everything a restore checks before it starts anything: every file's
    /// SHA-256; the disk's backing chain (`verifyDiskChain`); for a version
    /// 2 record its memory chain (parents found by id among the record's
    /// siblings: a loop, a parent outside the tree or a missing one is
    /// refused), each parent's memory files, and every page the chain restores
    /// against its digest. Blocking.
    public func verifyRestorable() throws {
        try verify()
        try verifyDiskChain()
        guard manifest.memory != nil else { return }
        let chain = try MemoryChain(self)
        // A parent's memory files; its disk, where this record's disk chain
        // goes through it, `verifyDiskChain` has checked.
        for parent in chain.records.dropFirst() { try parent.verify(role: .memory) }
        try chain.reader().forEachPage { _, _, _ in }
    }

    /// The spec's boot paths resolved: a relative one (a standalone
    /// export's `kernel`, `initrd`) against the record's directory, and a
    /// located external file where the user pointed at a moved copy.
    public func resolvedBoot(located: [ExternalFile.Role: String]) -> VMSpec.Boot {
        guard case .kernel(let kernel, let initrd, let append) = manifest.spec.boot else { return manifest.spec.boot }
        func resolve(_ path: String) -> String { path.hasPrefix("/") ? path : "\(directory)/\(path)" }
        return .kernel(
            kernel: located[.kernel] ?? resolve(kernel), initrd: located[.initrd] ?? initrd.map(resolve), append: append)
    }
}

/// The qcow2 chain under a record's disk, for qemu-img.
public enum DiskChain {
    /// A `json:` source for qemu-img naming every layer from `top` down,
    /// its bottom (the file whose path the chain's headers name as
    /// `bottom`) replaced by `replacement`: a base image that moved. Nil
    /// when the chain does not reach `bottom`.
    public static func source(top: String, bottom: String, replacement: String) -> (source: String, bottomFormat: String)? {
        var layers: [String] = []
        var current = top
        var bottomFormat = "raw"
        while true {
            guard layers.count < 128, let image = try? QCOW2Image.open(path: current, writable: false, backing: .none),
                let name = image.header.backingFile
            else { return nil }
            layers.append(current)
            let next = QCOW2Image.resolve(backingName: name, relativeTo: current)
            if next == bottom {
                bottomFormat = image.header.backingFormat ?? "raw"
                break
            }
            current = next
        }
        var node: [String: Any] = ["driver": bottomFormat, "file": ["driver": "file", "filename": replacement]]
        for layer in layers.reversed() {
            node = ["driver": "qcow2", "file": ["driver": "file", "filename": layer], "backing": node]
        }
        guard let data = try? JSONSerialization.data(withJSONObject: node, options: [.sortedKeys]) else { return nil }
        return ("json:" + String(decoding: data, as: UTF8.self), bottomFormat)
    }
}

/// `cevm records export`: a standalone record, restorable with the records
/// tree gone. Layout (Docs/record-format.md, "Standalone export"):
///
///     DIR/manifest.json    the record's manifest, rewritten; written last
///     DIR/memory.qcow2     the whole memory chain flattened: a full image
///     DIR/memory.digest    copied (it already describes the whole chain)
///     DIR/memory.prologue, memory.epilogue   copied
///     DIR/memory.mig       instead of the four above, for a version 1 record
///     DIR/disk.qcow2       the disk chain flattened, base included: no backing
///     DIR/kernel, DIR/initrd   copies of the boot files
///
/// Everything is written into a temporary directory beside DIR, fsynced,
/// then renamed to DIR: an interrupted export leaves no DIR.
public enum RecordExport {
    public static let kernelName = "kernel"
    public static let initrdName = "initrd"
    public static let diskName = "disk.qcow2"

    /// Why an export cannot be written.
    public enum Failure: Error, Sendable, CustomStringConvertible {
        case destinationInUse(String)
        case noDisk(String)

        public var description: String {
            switch self {
            case .destinationInUse(let path): return "\(path) exists and is not an empty directory"
            case .noDisk(let path): return "the record's disk \(path) cannot be flattened: \(path) is missing"
            }
        }
    }

    /// Writes the standalone record. `flattenDisk(source, output)` writes
    /// the disk chain `source` (a path or a qemu-img `json:` source) into a
    /// new qcow2 at `output` without a backing file (qemu-img convert).
    /// `located`: the external files as `Record.locateExternalFiles` found them.
    public static func export(
        _ record: Record, to destination: String, located: [ExternalFile.Role: String], diskSource: String?,
        flattenDisk: @Sendable (_ source: String, _ output: String) async throws -> Void
    ) async throws -> Record {
        if Files.exists(destination) {
            guard Files.isDirectory(destination), (try Files.list(destination)).isEmpty else {
                throw Failure.destinationInUse(destination)
            }
        }
        let parent = Files.parent(of: destination)
        let name = destination.split(separator: "/").last.map(String.init) ?? "export"
        let temporary = "\(parent)/.\(name).partial-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        try Files.makeDirectory(temporary, mode: 0o700)
        do {
            let manifest = try await write(record, into: temporary, located: located, diskSource: diskSource, flattenDisk: flattenDisk)
            _ = try await Blocking.run { [temporary] in try RecordStore.commit(manifest, in: temporary) }
            if Files.exists(destination) { rmdir(destination) }
            try Files.rename(temporary, to: destination)
            try Files.fsync(path: parent)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        return try Record.load(directory: destination)
    }

    static func write(
        _ record: Record, into directory: String, located: [ExternalFile.Role: String], diskSource: String?,
        flattenDisk: @Sendable (_ source: String, _ output: String) async throws -> Void
    ) async throws -> RecordManifest {
        var manifest = record.manifest
        var files: [RecordManifest.FileEntry] = []
        // Memory: one full image of what the chain restores.
        if let memory = record.manifest.memory {
            let chain = try MemoryChain(record)
            let summary = try await Blocking.run { [directory] in
                let writer = try MemoryImageWriter(path: "\(directory)/\(MemoryImage.fileName)", layout: memory.layout)
                try chain.reader().forEachPage { block, offset, data in try writer.page(block: block, offset: offset, data: data) }
                return try writer.finish()
            }
            for name in [memory.prologue, memory.epilogue] {
                try await Blocking.run { [directory] in try copy("\(record.directory)/\(name)", to: "\(directory)/\(name)") }
            }
            // The digests the writer wrote describe the same pages as the
            // record's own (which already covered its whole chain).
            var flat = memory
            flat.kind = .full
            flat.parent = nil
            flat.image = MemoryImage.fileName
            flat.digests = MemoryImage.digestFileName
            flat.dataPages = summary.dataPages
            flat.zeroPages = summary.zeroPages
            flat.unchangedPages = summary.unchangedPages
            manifest.memory = flat
            for name in flat.fileNames { files.append(try await entry(directory, name, role: .memory, hashed: name != flat.image)) }
        } else if let stream = record.manifest.file(.memory) {
            try await Blocking.run { [directory] in try copy(record.path(of: stream), to: "\(directory)/\(stream.name)") }
            files.append(try await entry(directory, stream.name, role: .memory))
        }
        // Disk: the whole chain, base included, in one image without backing.
        if record.manifest.disk != nil, let diskPath = record.diskPath {
            guard Files.exists(diskPath) else { throw Failure.noDisk(diskPath) }
            try await flattenDisk(diskSource ?? diskPath, "\(directory)/\(diskName)")
            try Files.fsync(path: "\(directory)/\(diskName)")
            files.append(try await entry(directory, diskName, role: .disk))
            manifest.disk = .init(file: diskName, kind: .full, backing: "", backingFormat: "")
            if var specDisk = manifest.spec.disk {
                specDisk.base = diskName
                specDisk.baseFormat = "qcow2"
                specDisk.createdByCEVM = false
                specDisk.record = nil
                specDisk.template = nil
                manifest.spec.disk = specDisk
            }
        }
        manifest.parent = nil
        // Boot files: copied, named relatively.
        var external: [ExternalFile] = []
        if case .kernel(let kernel, let initrd, let append) = record.resolvedBoot(located: located) {
            try await Blocking.run { [directory] in try copy(kernel, to: "\(directory)/\(kernelName)") }
            external.append(try await identity(directory, kernelName, role: .kernel))
            if let initrd {
                try await Blocking.run { [directory] in try copy(initrd, to: "\(directory)/\(initrdName)") }
                external.append(try await identity(directory, initrdName, role: .initrd))
            }
            manifest.spec.boot = .kernel(kernel: kernelName, initrd: initrd == nil ? nil : initrdName, append: append)
        }
        manifest.external = external
        manifest.files = files
        try Files.fsync(path: directory)
        return manifest
    }

    /// `hashed`: false for a page image (checked by its page digests).
    static func entry(_ directory: String, _ name: String, role: RecordManifest.FileEntry.Role, hashed: Bool = true) async throws
        -> RecordManifest.FileEntry
    {
        try await Blocking.run {
            let path = "\(directory)/\(name)"
            try Files.fsync(path: path)
            return .init(name: name, role: role, size: try Files.size(path), sha256: hashed ? try FileDigest.sha256(of: path) : nil)
        }
    }

    static func identity(_ directory: String, _ name: String, role: ExternalFile.Role) async throws -> ExternalFile {
        let path = "\(directory)/\(name)"
        let (size, sha256) = try await Blocking.run {
            try Files.fsync(path: path)
            return (try Files.size(path), try FileDigest.sha256(of: path))
        }
        return ExternalFile(role: role, path: name, size: size, sha256: sha256)
    }

    /// Copies a file byte for byte into a new file, then fsyncs it.
    static func copy(_ source: String, to destination: String) throws {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        if input < 0 { throw RecordError.missingFile(path: source) }
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if output < 0 { throw RecordError.writeFailed(path: destination, reason: String(cString: strerror(errno))) }
        defer { close(output) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try Files.readSome(input, into: &buffer, subject: source)
            if n == 0 { break }
            try Files.writeAll(output, buffer[0..<n], subject: destination)
        }
        if fsync(output) != 0 { throw RecordError.writeFailed(path: destination, reason: String(cString: strerror(errno))) }
    }
}
