import ArgumentParser

/// `cevm bench`: benchmarks that print figures (never timed tests). Each
/// measures cevm and its peer (QEMU's own tool or mechanism) in the same run.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure cevm against its peers and print the figures.",
        subcommands: [BenchDisk.self, BenchCheckpoint.self, BenchTurnaround.self, BenchGroup.self])
}
