import ArgumentParser
import CEVMBench
import CEVMSystem
import Control
import Records
import Supervisor

/// `cevm bench group`: group checkpoints of 1, 2, 4 … guests streaming to
/// each other on one cevm network, against the same guests checkpointed one
/// by one, in one run. Docs/benchmarks.md has the figures.
struct BenchGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "group",
        abstract: "Group checkpoints against one-by-one checkpoints of the same guests.",
        discussion: """
            For each guest count: boots that many bundled guests on a new cevm network (receiver/sender \
            pairs streaming checked records over TCP), checkpoints each one by one, then all as one group \
            (`cevm checkpoint --net`), and prints each member's pause, the largest console gap, the time \
            to durable, the frames held during the cut and those recorded in flight. Nothing is asserted: \
            the target (group's largest pause within 20 ms of the largest single pause) is printed with \
            "met" or "not met".
            """)

    @Option(help: "Guest counts, comma-separated.") var guests: String = "1,2,4"

    @Option(help: "Guest RAM.") var memory: String = "192M"

    @Option(help: "Records per second each sender streams (cevm.netrate).") var rate: Int = 150

    @Option(help: "Mechanism of every checkpoint.") var mechanism: Mechanism = .cevm

    @Option(help: "CEVM's affinity policy (default cevm's).") var policy: AffinityPolicy?

    @Option(help: "Rounds (one by one, then as a group) per guest count; the target takes the medians.") var `repeat`: Int = 3

    @Flag(help: "Keep the temporary CEVM_HOME (its VMs are stopped anyway).") var keep = false

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            var sizes: [Int] = []
            for text in guests.split(separator: ",") {
                guard let n = Int(text.trimmingCharacters(in: .whitespaces)), (1...16).contains(n) else {
                    throw CLIError("--guests '\(text)': 1...16")
                }
                sizes.append(n)
            }
            let mib = Int(try parseSize(memory, defaultUnit: 1 << 20) >> 20)
            guard mib >= 128, (1...10_000).contains(rate), (1...20).contains(`repeat`) else {
                throw CLIError("--memory at least 128M, --rate 1...10000, --repeat 1...20")
            }
            if mechanism != .cevm && policy != nil { throw CLIError("--policy applies to --mechanism cevm") }
            let home = try BenchScratch.make(in: nil, prefix: "cevm-bench-group")
            let stop = AsyncSignal()
            let sources = DiskServe.installSignalHandlers(stop)
            defer { sources.forEach { $0.cancel() } }
            let runner = GroupBenchRunner(
                home: home, sizes: sizes, memoryMiB: mib, rate: rate, mechanism: mechanism, policy: policy?.rawValue, repeats: `repeat`, stop: stop)
            try await runner.runAndReport(keep: keep, json: common.json)
        }
    }
}
