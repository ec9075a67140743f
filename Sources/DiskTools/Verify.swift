import QCOW2

/// Reads an image through the QCOW2 engine and through libqcow and compares
/// the bytes: `cevm disk verify` and the tests' independent oracle.
///
/// libqcow 20201213 (Debian 12) has two gaps the comparison works around,
/// cluster by cluster, and reports: it reads v3 zero clusters as host
/// offset 0 (the header) instead of zeros, and it cannot follow a raw
/// backing file. Clusters whose content comes from a zero cluster or from a
/// raw backing file are counted, not compared (qemu-img compare covers them
/// in the tests). Third gap: a read spanning clusters served by different
/// layers can return wrong bytes, while the same bytes read one cluster at a
/// time are right; so by default every libqcow read is one cluster.
public enum DiskVerifier {
    public struct Report: Sendable, Codable, Equatable {
        public var path: String
        public var virtualSize: UInt64
        /// Every layer, top first, as "format path".
        public var layers: [String]
        public var bytesCompared: UInt64
        /// Guest clusters served by a v3 zero cluster (not read by libqcow).
        public var zeroClustersSkipped: UInt64
        /// Guest clusters served by a raw backing file (not read by libqcow).
        public var rawClustersSkipped: UInt64
        /// Guest offsets of the first differing bytes (at most 16), in order.
        public var mismatches: [UInt64]
        public var identical: Bool { mismatches.isEmpty }
    }

    enum Source { case compare, zero, raw }

    /// `maxRun`: the most bytes compared per libqcow read (at least one cluster).
    public static func verify(path: String, maxRun: UInt64 = 0) throws -> Report {
        let image = try QCOW2Image.open(path: path)
        let chain = image.chain
        var report = Report(
            path: path, virtualSize: image.virtualSize,
            layers: chain.map { ($0 is QCOW2Image ? "qcow2 " : "raw ") + $0.path },
            bytesCompared: 0, zeroClustersSkipped: 0, rawClustersSkipped: 0, mismatches: [])
        let libqcow = try LibQcowReader(path: path)
        if libqcow.virtualSize != image.virtualSize {
            report.mismatches.append(min(libqcow.virtualSize, image.virtualSize))
            return report
        }
        let cs = image.clusterSize
        let total = image.guestClusterCount
        // Which layer serves each cluster; runs of comparable clusters are
        // read in one call (at most 1 MiB).
        func source(_ g: UInt64) throws -> Source {
            let start = g * cs
            for layer in chain {
                guard let qcow = layer as? QCOW2Image else { return .raw }
                // Layers may have other cluster sizes: check every cluster of
                // this layer that the guest cluster covers.
                let first = start / qcow.clusterSize
                let last = (min(start + cs, qcow.virtualSize) - 1) / qcow.clusterSize
                guard start < qcow.virtualSize else { return .compare }
                var states: [QCOW2Entries.L2Entry] = []
                for c in first...last { states.append(try qcow.clusterState(c)) }
                if states.contains(where: { if case .zero = $0 { true } else { false } }) { return .zero }
                if states.allSatisfy({ $0 == .unallocated }) { continue }
                if states.contains(.unallocated) {
                    // Mixed within a smaller-cluster layer: a zero or raw part
                    // below would need a finer split; compare only if nothing
                    // below is zero or raw.
                    return try deeperIsPlain(chain: chain, after: layer, start: start, count: cs) ? .compare : .zero
                }
                return .compare
            }
            return .compare
        }
        var g: UInt64 = 0
        while g < total && report.mismatches.count < 16 {
            let kind = try source(g)
            switch kind {
            case .zero: report.zeroClustersSkipped += 1; g += 1; continue
            case .raw: report.rawClustersSkipped += 1; g += 1; continue
            case .compare: break
            }
            var end = g + 1
            while end < total, end - g < max(1, maxRun / cs), try source(end) == .compare { end += 1 }
            let offset = g * cs
            let count = Int(min(end * cs, image.virtualSize) - offset)
            let mine = try image.read(at: offset, count: count)
            let theirs = try libqcow.read(at: offset, count: count)
            if mine != theirs {
                for i in 0..<count where mine[i] != theirs[i] {
                    report.mismatches.append(offset + UInt64(i))
                    if report.mismatches.count >= 16 { break }
                }
            }
            report.bytesCompared += UInt64(count)
            g = end
        }
        return report
    }

    /// True if no layer below `layer` serves any part of the range from a
    /// zero cluster or a raw file.
    static func deeperIsPlain(chain: [any BlockReader], after layer: any BlockReader, start: UInt64, count: UInt64) throws -> Bool {
        guard let index = chain.firstIndex(where: { $0 === layer }) else { return false }
        for lower in chain[(index + 1)...] {
            guard let qcow = lower as? QCOW2Image else { return false }
            guard start < qcow.virtualSize else { return true }
            let first = start / qcow.clusterSize
            let last = (min(start + count, qcow.virtualSize) - 1) / qcow.clusterSize
            for c in first...last {
                if case .zero = try qcow.clusterState(c) { return false }
            }
        }
        return true
    }
}
