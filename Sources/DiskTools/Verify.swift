import Foundation
import QCOW2

/// Reads an image through the QCOW2 engine and through libqcow and compares
/// the bytes: `cevm disk verify` and the tests' independent oracle. Where
/// the two disagree, QEMU itself (`qemu-img convert` of the disputed range)
/// decides which of them misread before the image is called different.
///
/// The comparison works in pieces of the smallest cluster size in the
/// chain: a piece lies inside one cluster of every layer, so one layer
/// serves all of it. libqcow 20201213 (Debian 12) has three gaps the
/// comparison works around and reports. It reads v3 zero clusters as host
/// offset 0 (the header) instead of zeros, and it cannot follow a raw
/// backing file: pieces served by a zero cluster or a raw backing file are
/// counted, not compared (qemu-img compare covers them in the tests). A
/// read spanning clusters served by different layers can return wrong
/// bytes, while the same bytes read one piece at a time are right: every
/// libqcow read is one piece.
public enum DiskVerifier {
    public struct Report: Sendable, Codable, Equatable {
        public var path: String
        public var virtualSize: UInt64
        /// Every layer, top first, as "format path".
        public var layers: [String]
        /// Bytes per comparison piece: the smallest cluster size in the chain.
        public var pieceSize: UInt64
        public var bytesCompared: UInt64
        /// Pieces served by a v3 zero cluster (not read by libqcow).
        public var zeroClustersSkipped: UInt64
        /// Pieces served by a raw backing file (not read by libqcow).
        public var rawClustersSkipped: UInt64
        /// Ranges where libqcow and cevm read different bytes, and which
        /// reader QEMU showed wrong (at most 64 kept).
        public var disagreements: [Disagreement]
        /// Guest offsets of the first bytes where cevm's reading is wrong or
        /// undecided (at most 16), in order. Empty: the image reads the same.
        public var mismatches: [UInt64]
        public var identical: Bool { mismatches.isEmpty }
    }

    /// One disputed piece: libqcow and cevm read different bytes there.
    public struct Disagreement: Sendable, Codable, Equatable {
        public var offset: UInt64
        public var length: UInt64
        /// The reader whose bytes QEMU's differ from: "libqcow", "cevm", or
        /// "undecided" (QEMU agrees with neither, or could not be run).
        public var wrongReader: String
        /// Why it is undecided, if it is.
        public var note: String?
    }

    /// A reader of guest bytes: (offset, count) -> bytes.
    typealias Read = (UInt64, Int) throws -> [UInt8]

    enum Source { case compare, zero, raw }

    /// `maxRun`: the most bytes read from cevm's engine per call (at least
    /// one piece); libqcow is always read one piece at a time.
    public static func verify(path: String, maxRun: UInt64 = 0) throws -> Report {
        try verify(path: path, maxRun: maxRun, enginePath: path, libqcowPath: path, qemuRangeLimit: 64)
    }

    /// The comparison, with each reader able to read its own copy of the
    /// image (the tests give one of them a copy with a corrupted cluster);
    /// QEMU reads `path`, range by range up to `qemuRangeLimit` disputes,
    /// then from one whole conversion.
    static func verify(path: String, maxRun: UInt64, enginePath: String, libqcowPath: String, qemuRangeLimit: Int) throws -> Report {
        let image = try QCOW2Image.open(path: path)
        let engine = enginePath == path ? image : try QCOW2Image.open(path: enginePath)
        let chain = image.chain
        let piece = chain.compactMap { ($0 as? QCOW2Image)?.clusterSize }.min() ?? image.clusterSize
        var report = Report(
            path: path, virtualSize: image.virtualSize,
            layers: chain.map { ($0 is QCOW2Image ? "qcow2 " : "raw ") + $0.path },
            pieceSize: piece, bytesCompared: 0, zeroClustersSkipped: 0, rawClustersSkipped: 0,
            disagreements: [], mismatches: [])
        let libqcow = try LibQcowReader(path: libqcowPath)
        if libqcow.virtualSize != image.virtualSize {
            report.mismatches.append(min(libqcow.virtualSize, image.virtualSize))
            return report
        }
        // Which layer serves piece p: cluster sizes are powers of two no
        // smaller than the piece, so the piece lies in one cluster of each.
        func source(_ p: UInt64) throws -> Source {
            let start = p * piece
            for layer in chain {
                guard let qcow = layer as? QCOW2Image else { return .raw }
                guard start < qcow.virtualSize else { return .compare }  // zeros past a shorter layer
                switch try qcow.clusterState(start / qcow.clusterSize) {
                case .zero: return .zero
                case .unallocated: continue
                case .data, .compressed: return .compare
                }
            }
            return .compare
        }
        let third = QEMUReader(path: path, rangeLimit: qemuRangeLimit)
        let total = (image.virtualSize + piece - 1) / piece
        let perRun = max(1, maxRun / piece)
        var p: UInt64 = 0
        while p < total && report.mismatches.count < 16 {
            switch try source(p) {
            case .zero: report.zeroClustersSkipped += 1; p += 1; continue
            case .raw: report.rawClustersSkipped += 1; p += 1; continue
            case .compare: break
            }
            var end = p + 1
            while end < total, end - p < perRun, try source(end) == .compare { end += 1 }
            let offset = p * piece
            let count = Int(min(end * piece, image.virtualSize) - offset)
            let mine = try engine.read(at: offset, count: count)
            var done = 0
            while done < count && report.mismatches.count < 16 {
                let n = min(Int(piece), count - done)
                let at = offset + UInt64(done)
                let theirs = try libqcow.read(at: at, count: n)
                let ours = Array(mine[done..<(done + n)])
                if ours != theirs {
                    try settle(at: at, ours: ours, theirs: theirs, qemu: third, into: &report)
                }
                done += n
            }
            report.bytesCompared += UInt64(count)
            p = end
        }
        return report
    }

    /// Asks QEMU for the disputed piece and records which reader was wrong;
    /// cevm wrong, or no decision, makes a mismatch.
    static func settle(at offset: UInt64, ours: [UInt8], theirs: [UInt8], qemu: QEMUReader, into report: inout Report) throws {
        var disagreement = Disagreement(offset: offset, length: UInt64(ours.count), wrongReader: "undecided", note: nil)
        do {
            let reference = try qemu.read(at: offset, count: ours.count)
            if reference == ours {
                disagreement.wrongReader = "libqcow"
            } else if reference == theirs {
                disagreement.wrongReader = "cevm"
            } else {
                disagreement.note = "QEMU reads a third content"
            }
        } catch {
            disagreement.note = "\(error)"
        }
        if report.disagreements.count < 64 { report.disagreements.append(disagreement) }
        guard disagreement.wrongReader != "libqcow" else { return }
        for i in 0..<ours.count where ours[i] != theirs[i] {
            report.mismatches.append(offset + UInt64(i))
            if report.mismatches.count >= 16 { break }
        }
    }
}

/// QEMU as the third reader: `qemu-img convert` of one guest range of the
/// image (through its backing chain, shared lock) to a temporary raw file,
/// using the raw driver's offset and size over the qcow2 node. Past
/// `rangeLimit` ranges (a reader wrong almost everywhere would otherwise
/// cost one process per piece) it converts the whole image once, sparse,
/// and reads the rest from that copy. Not thread-safe.
final class QEMUReader {
    let path: String
    let rangeLimit: Int
    private var ranges = 0
    private var whole: String?

    init(path: String, rangeLimit: Int = 64) {
        self.path = path
        self.rangeLimit = rangeLimit
    }

    deinit {
        if let whole { try? FileManager.default.removeItem(atPath: whole) }
    }

    func read(at offset: UInt64, count: Int) throws(DiskToolsError) -> [UInt8] {
        if ranges < rangeLimit {
            ranges += 1
            let out = Self.temporaryPath()
            defer { try? FileManager.default.removeItem(atPath: out) }
            // In --image-opts a comma inside a value is written twice.
            let file = path.replacingOccurrences(of: ",", with: ",,")
            let spec = "driver=raw,offset=\(offset),size=\(count),file.driver=qcow2,file.file.filename=\(file)"
            try Self.run(["qemu-img", "convert", "-U", "--image-opts", spec, "-O", "raw", out])
            return try Self.bytes(of: out, at: 0, count: count)
        }
        let copy: String
        if let whole {
            copy = whole
        } else {
            copy = Self.temporaryPath()
            whole = copy
            try Self.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", path, copy])
        }
        return try Self.bytes(of: copy, at: offset, count: count)
    }

    static func temporaryPath() -> String {
        NSTemporaryDirectory() + "cevm-verify-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).raw"
    }

    static func run(_ arguments: [String]) throws(DiskToolsError) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do {
            try process.run()
        } catch {
            throw .tool(command: arguments.joined(separator: " "), status: -1, output: "\(error)")
        }
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw .tool(command: arguments.joined(separator: " "), status: process.terminationStatus, output: String(decoding: output, as: UTF8.self))
        }
    }

    /// `count` bytes of a file at `offset`; past its end, zeros (a sparse
    /// tail).
    static func bytes(of file: String, at offset: UInt64, count: Int) throws(DiskToolsError) -> [UInt8] {
        var bytes: [UInt8] = []
        do {
            let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: file))
            defer { try? handle.close() }
            try handle.seek(toOffset: offset)
            bytes = Array(try handle.read(upToCount: count) ?? Data())
        } catch {
            throw .tool(command: "read \(file)", status: -1, output: "\(error)")
        }
        if bytes.count < count { bytes += [UInt8](repeating: 0, count: count - bytes.count) }
        return bytes
    }
}
