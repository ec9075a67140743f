extension QCOW2Image {
    /// Copies into this image every guest cluster that `layer` holds (its
    /// own clusters, not its backing's) and this image does not, reading
    /// them through `layer`. When `layer` is this image's backing, or holds
    /// the same content as it for those clusters, what this image reads does
    /// not change; it merely stops depending on `layer` for them. A zero
    /// cluster of `layer` becomes a zero cluster here; this image's own
    /// zero and data clusters are left as they are. Both must
    /// have the same geometry. Returns how many clusters were copied; the
    /// caller flushes.
    public func absorb(clustersOf layer: QCOW2Image) throws(QCOW2Error) -> Int {
        guard layer.clusterSize == clusterSize, layer.virtualSize == virtualSize else {
            throw .invalidCreateOption(
                option: "absorb: \(layer.path) is \(layer.virtualSize) bytes in \(layer.clusterSize)-byte clusters",
                value: virtualSize, reason: "\(path) must have the same size and cluster size")
        }
        var buffer = [UInt8](repeating: 0, count: Int(clusterSize))
        var copied = 0
        var next: UInt64 = 0
        while let k = try layer.nextAllocatedCluster(atOrAfter: next) {
            next = k + 1
            guard case .unallocated = try clusterState(k) else { continue }
            let offset = k * clusterSize
            let count = Int(min(clusterSize, virtualSize - offset))
            if case .zero = try layer.clusterState(k) {
                // A zero cluster stays one (no data written for it).
                try writeZeroes(at: offset, count: UInt64(count))
                copied += 1
                continue
            }
            var failure: QCOW2Error?
            buffer.withUnsafeMutableBytes { b in
                do throws(QCOW2Error) {
                    let part = UnsafeMutableRawBufferPointer(rebasing: b[0..<count])
                    try layer.read(into: part, at: offset)
                    try write(UnsafeRawBufferPointer(part), at: offset)
                } catch { failure = error }
            }
            if let failure { throw failure }
            copied += 1
        }
        return copied
    }
}
