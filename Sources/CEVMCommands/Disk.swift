import ArgumentParser
import DiskTools
import Foundation
import QCOW2

/// `cevm disk`: look at and prepare qcow2 images with cevm's own engine.
struct Disk: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect, create and verify qcow2 disk images.",
        subcommands: [DiskInfo.self, DiskCreateOverlay.self, DiskVerify.self, DiskServe.self])
}

/// One layer of a backing chain as `cevm disk info` reports it.
struct DiskLayerReport: Codable {
    var path: String
    var format: String
    var virtualSize: UInt64
    var clusterSize: UInt64?
    var version: UInt32?
    var allocatedClusters: UInt64?
    var backingFile: String?
    var backingFormat: String?
}

struct DiskInfoReport: Codable {
    var path: String
    var format: String
    var virtualSize: UInt64
    var clusterSize: UInt64?
    var chain: [DiskLayerReport]
}

struct DiskInfo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show an image's format, virtual size, cluster size, backing chain and allocated clusters per layer.")

    @Argument(help: "A qcow2 image.") var image: String

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let report = try Self.report(path: image)
            if common.json { return try Output.json(report) }
            var lines = [
                "image:         \(report.path)",
                "format:        \(report.format)",
                "virtual size:  \(report.virtualSize) bytes (\(report.virtualSize >> 20) MiB)",
            ]
            if let cs = report.clusterSize { lines.append("cluster size:  \(cs)") }
            lines.append("chain:")
            for (depth, layer) in report.chain.enumerated() {
                var line = "  \(depth): \(layer.format) \(layer.path)"
                if let count = layer.allocatedClusters, let cs = layer.clusterSize {
                    line += ", \(count) allocated cluster(s) of \(cs) bytes"
                }
                lines.append(line)
            }
            Output.line(lines.joined(separator: "\n"))
        }
    }

    static func report(path: String) throws -> DiskInfoReport {
        let top = try QCOW2Image.open(path: path)
        var layers: [DiskLayerReport] = []
        for layer in top.chain {
            if let image = layer as? QCOW2Image {
                let header = image.header
                layers.append(DiskLayerReport(
                    path: image.path, format: "qcow2", virtualSize: image.virtualSize, clusterSize: image.clusterSize,
                    version: header.version, allocatedClusters: try image.allocatedClusterCount(),
                    backingFile: header.backingFile, backingFormat: header.backingFormat))
            } else {
                layers.append(DiskLayerReport(path: layer.path, format: "raw", virtualSize: layer.virtualSize))
            }
        }
        return DiskInfoReport(path: path, format: "qcow2", virtualSize: top.virtualSize, clusterSize: top.clusterSize, chain: layers)
    }
}

struct DiskCreateOverlay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create-overlay",
        abstract: "Create an empty qcow2 overlay over a backing image (qcow2 or raw).")

    @Argument(help: "The overlay to create (must not exist).") var overlay: String
    @Option(name: .long, help: "The backing image, stored as given (relative to the overlay's directory if relative).")
    var backing: String
    @Option(name: .long, help: "The backing format: qcow2 or raw (probed when omitted).")
    var backingFormat: String?
    @Option(name: .long, help: "Cluster size in bytes, a power of two from 512 to 2M.")
    var clusterSize: String = "64K"

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let size = try parseSize(clusterSize, defaultUnit: 1)
            guard size.nonzeroBitCount == 1, (512...(2 << 20)).contains(size) else {
                throw CLIError("cluster size must be a power of two from 512 to 2M, not \(clusterSize)")
            }
            let image = try QCOW2Image.createOverlay(
                path: overlay, backingFile: backing, backingFormat: backingFormat,
                clusterBits: UInt32(size.trailingZeroBitCount))
            try image.flush()
            if common.json { return try Output.json(try DiskInfo.report(path: overlay)) }
            Output.line("created \(overlay): \(image.virtualSize) bytes over \(backing)")
        }
    }
}

struct DiskVerify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Read an image through cevm's engine and through libqcow and compare every byte; QEMU settles any disagreement.")

    @Argument(help: "A qcow2 image.") var image: String

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let report = try DiskVerifier.verify(path: image)
            if common.json {
                try Output.json(report)
            } else {
                var lines = ["compared \(report.bytesCompared) bytes of \(report.path) (\(report.layers.count) layer(s), \(report.pieceSize)-byte pieces)"]
                if report.zeroClustersSkipped > 0 || report.rawClustersSkipped > 0 {
                    lines.append("not compared (libqcow cannot read them): \(report.zeroClustersSkipped) zero piece(s), \(report.rawClustersSkipped) piece(s) from a raw backing file")
                }
                for d in report.disagreements {
                    let range = "0x\(String(d.offset, radix: 16))+0x\(String(d.length, radix: 16))"
                    switch d.wrongReader {
                    case "undecided": lines.append("libqcow and cevm disagree at \(range), undecided: \(d.note ?? "")")
                    default: lines.append("libqcow and cevm disagree at \(range); QEMU reads as the other: \(d.wrongReader) is wrong")
                    }
                }
                if report.identical {
                    lines.append("identical")
                } else {
                    lines.append("DIFFERENT at guest offset(s) " + report.mismatches.map { "0x" + String($0, radix: 16) }.joined(separator: ", "))
                }
                Output.line(lines.joined(separator: "\n"))
            }
            if !report.identical { throw ExitCode.failure }
        }
    }
}
