extension QCOW2Header {
    /// The bytes a header's first cluster is made of, up to where its last
    /// meaningful byte ends: the fixed header, the extensions and their end
    /// marker, the backing file name.
    static func usedLength(_ header: QCOW2Header) -> Int {
        var end = Int(header.headerLength)
        if let last = header.extensions.last {
            end = Int(last.offset) + 8 + ((last.data.count + 7) & ~7)
        }
        end += 8  // the end marker (a version 2 image may lack it: zeros either way)
        if header.backingFileOffset != 0 {
            end = max(end, Int(header.backingFileOffset) + Int(header.backingFileSize))
        }
        return end
    }

    /// The first cluster `first` (as read from the image) with another
    /// backing file: the fixed header unchanged but for the backing name's
    /// offset and size, the backing format extension (first, as QEMU writes
    /// it) replaced or dropped, every other extension kept as it was and in
    /// its order (feature names, bitmaps, unknown ones), the end marker,
    /// then the name. Returns the new cluster and how many bytes from 0 must
    /// be written for the file to hold it (the longer of the old and the new
    /// used length: bytes the old header used and the new one does not are
    /// zeroed).
    static func withBacking(
        _ header: QCOW2Header, first: [UInt8], name: String?, format: String?
    ) throws(QCOW2Error) -> (cluster: [UInt8], writeLength: Int) {
        let clusterSize = Int(header.clusterSize)
        let headerLength = Int(header.headerLength)
        guard first.count >= headerLength else {
            throw .truncated(what: "qcow2 header", offset: 0, length: UInt64(headerLength), fileSize: UInt64(first.count))
        }
        var out = [UInt8](repeating: 0, count: clusterSize)
        out.replaceSubrange(0..<headerLength, with: first[0..<headerLength])
        var position = headerLength
        func append(type: UInt32, data: [UInt8]) throws(QCOW2Error) {
            let padded = (data.count + 7) & ~7
            guard position + 8 + padded + 8 <= clusterSize else {
                throw .invalidCreateOption(option: "backing file", value: UInt64(clusterSize), reason: "the header extensions do not fit in the first cluster")
            }
            putBE32(&out, position, type)
            putBE32(&out, position + 4, UInt32(data.count))
            out.replaceSubrange((position + 8)..<(position + 8 + data.count), with: data)
            position += 8 + padded
        }
        var nameBytes: [UInt8]?
        if let name {
            let bytes = Array(name.utf8)
            guard !bytes.isEmpty, bytes.count <= Int(Limits.maxBackingFileName), !bytes.contains(0) else {
                throw .invalidCreateOption(option: "backing file name length", value: UInt64(bytes.count), reason: "must be 1...\(Limits.maxBackingFileName) bytes without NUL")
            }
            nameBytes = bytes
            if let format {
                let formatBytes = Array(format.utf8)
                guard !formatBytes.isEmpty, formatBytes.count <= Int(Limits.maxBackingFormatName), !formatBytes.contains(0) else {
                    throw .invalidCreateOption(option: "backing format length", value: UInt64(formatBytes.count), reason: "must be 1...\(Limits.maxBackingFormatName) bytes")
                }
                try append(type: ExtensionType.backingFormat, data: formatBytes)
            }
        }
        for ext in header.extensions where ext.type != ExtensionType.backingFormat {
            try append(type: ext.type, data: ext.data)
        }
        position += 8  // end marker: type 0, length 0 (already zero)
        if let nameBytes {
            guard position + nameBytes.count <= clusterSize else {
                throw .invalidCreateOption(
                    option: "backing file name length", value: UInt64(nameBytes.count),
                    reason: "the header, its extensions and the name do not fit in the first cluster (\(clusterSize) bytes)")
            }
            putBE64(&out, Field.backingFileOffset, UInt64(position))
            putBE32(&out, Field.backingFileSize, UInt32(nameBytes.count))
            out.replaceSubrange(position..<(position + nameBytes.count), with: nameBytes)
            position += nameBytes.count
        } else {
            putBE64(&out, Field.backingFileOffset, 0)
            putBE32(&out, Field.backingFileSize, 0)
        }
        return (out, max(position, usedLength(header)))
    }
}

extension QCOW2Image {
    /// The first sector: a write within it is all or nothing on every disk
    /// (the unit qcow2 and QEMU themselves rely on for a header update).
    public static let atomicHeaderBytes = 512

    /// Rewrites the backing file name and format of the closed image at
    /// `path` in its header (`nil`: no backing file; `format` is ignored
    /// then), as `qemu-img rebase -u` does: no cluster is read or copied,
    /// so what the image reads changes unless the caller made the new
    /// backing read the same. Every other header field and extension is
    /// kept. Nothing else may have the image open.
    ///
    /// Crash safety: the new header bytes are computed and parsed back
    /// first (a name that does not fit in the first cluster is refused
    /// before anything is written), then written with one pwrite(2) from
    /// offset 0 and made durable with fdatasync(2). When the old and the
    /// new header both end within the first 512 bytes
    /// (`atomicHeaderBytes`: the fixed header, a backing-format extension
    /// and a name of up to about 370 bytes), that write is one sector and a
    /// crash leaves the old header or the new one, never a mix. A longer
    /// header (a feature-name table, a long name) is written the same way,
    /// which is what `qemu-img rebase -u` does (it writes the whole first
    /// cluster): it is then only as atomic as the device's write unit, and
    /// a caller that must survive a torn write journals its intent and
    /// redoes the call (it is idempotent). Returns whether the write was
    /// within the first sector.
    @discardableResult
    public static func setBacking(path: String, name: String?, format: String?) throws(QCOW2Error) -> Bool {
        let file = try BlockFile(path: path, writable: true)
        let fileSize = try file.size()
        let prefix = try file.read(at: 0, count: Int(min(fileSize, UInt64(QCOW2Header.minimumPrefix))))
        guard prefix.count >= 24 else {
            throw .truncated(what: "qcow2 header", offset: 0, length: UInt64(QCOW2Header.minimumPrefix), fileSize: fileSize)
        }
        let bits = readBE32(prefix, QCOW2Header.Field.clusterBits)
        guard (QCOW2Header.Limits.minClusterBits...QCOW2Header.Limits.maxClusterBits).contains(bits) else {
            throw .invalidField(field: "cluster_bits", value: UInt64(bits), offset: UInt64(QCOW2Header.Field.clusterBits), reason: "must be 9...21")
        }
        let first = try file.read(at: 0, count: Int(min(fileSize, UInt64(1) << UInt64(bits))))
        let header = try QCOW2Header.parse(first, fileSize: fileSize)
        guard header.nbSnapshots == 0 else {
            throw .readOnly(path: path, reason: "it has \(header.nbSnapshots) internal snapshot(s)")
        }
        let (cluster, length) = try QCOW2Header.withBacking(header, first: first, name: name, format: format)
        // What a reader will see: the same image with the new backing.
        let check = try QCOW2Header.parse(cluster, fileSize: fileSize)
        guard check.backingFile == name, check.backingFormat == (name == nil ? nil : format),
            check.extensions.filter({ $0.type != QCOW2Header.ExtensionType.backingFormat }).map(\.data)
                == header.extensions.filter({ $0.type != QCOW2Header.ExtensionType.backingFormat }).map(\.data)
        else {
            throw .invalidCreateOption(option: "backing file", value: 0, reason: "the rewritten header of \(path) does not read back as written")
        }
        // Already so: nothing to write (a redo after a crash).
        if Array(first.prefix(length)) == Array(cluster.prefix(length)) { return length <= atomicHeaderBytes }
        try file.write(Array(cluster.prefix(length)), at: 0)
        try file.sync()
        return length <= atomicHeaderBytes
    }
}
