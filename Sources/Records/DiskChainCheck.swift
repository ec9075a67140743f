import CEVMSystem
import Foundation
import QCOW2

extension Record {
    /// The record's disk chain as its qcow2 headers name it, which is what
    /// QEMU and qemu-img open: each layer's backing file must be
    ///
    /// - another record's disk: a file that a record's manifest beside it
    ///   names as its disk, with the SHA-256 that manifest gives it (a
    ///   parent record, or the record a restored VM came from); the walk
    ///   goes on below it;
    /// - or the VM's own base as the manifest names it (`spec.disk.base`, or
    ///   the base image's recorded identity): the walk ends there, and the
    ///   base is checked against its identity by `locateExternalFiles`.
    ///
    /// Anything else — a header edited to name another file, a chain that
    /// loops or is longer than qcow2 chains go, a layer whose header does
    /// not read — is refused before anything starts, naming the layer and
    /// the file it names. Blocking.
    public func verifyDiskChain() throws {
        guard let top = diskPath else { return }
        var bases: [String] = []
        for base in [manifest.spec.disk?.base, manifest.external?.first(where: { $0.role == .base })?.resolved(in: directory)] {
            if let base, !bases.contains(base) { bases.append(base) }
        }
        func isBase(_ path: String) -> Bool { bases.contains { Self.samePath($0, path) } }
        var current = top
        var seen: [String] = [top]
        for _ in 0..<DiskChainCheck.maxLayers {
            let name: String?
            do {
                name = try QCOW2Image.open(path: current, writable: false, backing: .none).header.backingFile
            } catch {
                throw RecordError.badDiskChain(path: current, reason: "its header does not read (\(error))")
            }
            // A layer with no backing file is whole by itself: a flattened
            // disk, or a qcow2 base.
            guard let name else { return }
            let next = QCOW2Image.resolve(backingName: name, relativeTo: current)
            if isBase(next) { return }
            guard !seen.contains(where: { Self.samePath($0, next) }) else {
                throw RecordError.badDiskChain(path: current, reason: "names \(name) as its backing file, which is already in the chain above it (a loop)")
            }
            try Self.checkRecordDisk(next, namedBy: current, as: name, bases: bases)
            seen.append(next)
            current = next
        }
        throw RecordError.badDiskChain(path: top, reason: "its chain is longer than \(DiskChainCheck.maxLayers) layers")
    }

    /// `path` is a record's disk, unchanged since that record was written.
    static func checkRecordDisk(_ path: String, namedBy layer: String, as name: String, bases: [String]) throws {
        let owner: Record
        let directory = URL(fileURLWithPath: Files.parent(of: path)).standardized.path
        do { owner = try Record.load(directory: directory) } catch {
            throw RecordError.badDiskChain(
                path: layer,
                reason: "names \(name) as its backing file, which is neither a record's disk (\(error)) nor the VM's base"
                    + (bases.isEmpty ? "" : " (\(bases.joined(separator: " or ")))"))
        }
        guard let disk = owner.manifest.disk, let ownerDisk = owner.diskPath, samePath(ownerDisk, path) else {
            throw RecordError.badDiskChain(
                path: layer, reason: "names \(name) as its backing file: record \(owner.id) does not name that file as its disk")
        }
        guard let entry = owner.manifest.files.first(where: { $0.name == disk.file }) else {
            throw RecordError.badDiskChain(path: layer, reason: "names \(name): record \(owner.id) lists no such file")
        }
        // Named as its record names it (the chain's names pile up `..`).
        guard Files.exists(ownerDisk) else { throw RecordError.missingFile(path: ownerDisk) }
        if let expected = entry.sha256 {
            let digest = try FileDigest.sha256(of: ownerDisk)
            if digest != expected { throw RecordError.checksumMismatch(path: ownerDisk, expected: expected, actual: digest) }
        }
    }

    /// The same file: by their real paths when both exist, else by their
    /// names with `.` and `..` taken out.
    static func samePath(_ a: String, _ b: String) -> Bool {
        func real(_ path: String) -> String? {
            guard let resolved = realpath(path, nil) else { return nil }
            defer { free(resolved) }
            return String(cString: resolved)
        }
        if let x = real(a), let y = real(b) { return x == y }
        return URL(fileURLWithPath: a).standardized.path == URL(fileURLWithPath: b).standardized.path
    }
}

enum DiskChainCheck {
    /// QEMU's own bound on a backing chain's length is far above what cevm
    /// writes; a chain longer than this is not one cevm made.
    static let maxLayers = 1024
}
