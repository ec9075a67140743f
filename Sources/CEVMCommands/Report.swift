import ArgumentParser
import CEVMSystem
import Foundation
import Records
import Supervisor
import Turnaround
import TurnaroundReport
import VMStore

/// `cevm report`: seed 001's turnaround model fitted from measured records.
struct ReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Fit the turnaround model to measured checkpoints and predict what checkpointing costs a job.",
        discussion: """
            Reads the records of the VMs named (every VM when none is named) and any --record given. \
            Each record's timings give one sample of its mechanism: the guest pause, plus the progress \
            the guest lost beside the checkpoint's work, as the host estimated it from the vCPU threads' \
            run time (records made before cevm estimated it charge the pause alone; see Docs/turnaround.md). \
            The restart time is the median of the VMs' measured restores unless --restart is given. \
            Durations accept s, m, h and d suffixes (90s, 30m, 2h); a bare number is seconds.
            """)

    @Argument(help: "VMs whose records to use (default: every VM).") var vms: [String] = []
    @Option(name: .customLong("record"), help: "A record id or directory to use (repeatable).") var records: [String] = []
    @Option(name: .customLong("job-time"), help: "T_comp: the job's compute time undisturbed.") var jobTime: String?
    @Option(help: "Predict for n checkpoints (repeatable).") var checkpoints: [Int] = []
    @Option(help: "Predict for a checkpoint every DURATION of compute.") var interval: String?
    @Option(help: "Mean time between failures: adds the best interval and the expected turnaround with failures.")
    var mtbf: String?
    @Option(help: "Restart time after a failure (default: the median of the measured restores of these VMs).")
    var restart: String?
    @Option(help: "Also write the plot (turnaround against interval) as an SVG file.") var svg: String?

    @OptionGroup var common: CommonOptions

    func run() async throws {
        try await Output.reporting {
            let home = common.home
            let found = try Self.collect(home: home, vms: vms, records: records)
            guard !found.isEmpty else { throw CLIError("no records to fit (take some with `cevm checkpoint`)") }
            let samples = found.compactMap(Self.sample)
            let computeTime = try jobTime.map { try parseDuration($0, option: "--job-time") }
            if checkpoints.contains(where: { $0 < 1 }) { throw CLIError("--checkpoints must be at least 1") }
            var restartTime = try restart.map { try parseDuration($0, option: "--restart") }
            if restartTime == nil, mtbf != nil {
                let measured = Self.restoreTimes(home: home, vms: found.map(\.manifest.vm))
                restartTime = measured.isEmpty ? nil : measured.sorted()[measured.count / 2]
            }
            let failures = try mtbf.map { try Turnaround.FailureModel(mtbf: try parseDuration($0, option: "--mtbf"), restart: restartTime ?? 0) }
            var atN = checkpoints
            if let interval, let computeTime {
                atN.append(max(1, try Turnaround.checkpointCount(computeTime: computeTime, interval: try parseDuration(interval, option: "--interval"))))
            } else if interval != nil {
                throw CLIError("--interval needs --job-time")
            }
            let model = try Turnaround.fit(samples: samples, runs: [])
            var report = try Turnaround.report(model, inequalityAt: atN, computeTime: computeTime, failures: failures)
            if failures != nil && restartTime == nil {
                report.notes.append("no restore measured for these VMs and no --restart given: restart time taken as 0")
            }
            var predictions: [Prediction] = []
            if let computeTime {
                for n in atN {
                    for mechanism in Turnaround.Mechanism.allCases {
                        guard let value = try? Turnaround.predict(model, mechanism: mechanism, computeTime: computeTime, checkpoints: n) else { continue }
                        predictions.append(Prediction(mechanism: mechanism.rawValue, checkpoints: n, turnaround: value))
                    }
                }
            }
            if let svg {
                guard let computeTime else { throw CLIError("--svg needs --job-time (the plot is for one job)") }
                let document = try Turnaround.svg(model, computeTime: computeTime, failures: failures)
                try Files.writeAtomically(Array(document.utf8), to: Home.absolute(svg), mode: 0o644)
            }
            if common.json {
                return try Output.json(Output.Combined(report: report, predictions: predictions, records: found.map(\.id)))
            }
            Output.line("\(found.count) record(s), \(samples.count) sample(s)")
            Output.line(Turnaround.table(report))
            if !predictions.isEmpty, let computeTime {
                Output.line("Predicted turnaround for T_comp = \(Self.seconds(computeTime)):")
                for p in predictions {
                    let overhead = p.turnaround - computeTime
                    Output.line("  \(p.mechanism.padding(toLength: 20, withPad: " ", startingAt: 0)) n=\(p.checkpoints)  T_vm = \(Self.seconds(p.turnaround))  (+\(Self.seconds(overhead)), \(String(format: "%.2f", overhead / computeTime * 100)) %)")
                }
            }
            if let svg { Output.line("plot written to \(svg)") }
        }
    }

    struct Prediction: Codable {
        var mechanism: String
        var checkpoints: Int
        var turnaround: Double
    }

    static func seconds(_ s: Double) -> String {
        if s >= 3600 { return String(format: "%.2f h", s / 3600) }
        if s >= 60 { return String(format: "%.1f min", s / 60) }
        return String(format: "%.3f s", s)
    }

    /// Records of the named VMs (all when none) and the records named.
    static func collect(home: Home, vms: [String], records: [String]) throws -> [Record] {
        var out: [String: Record] = [:]
        let names = vms.isEmpty && records.isEmpty ? home.vmNames() : try vms.map(parseName)
        for name in names {
            let paths = home.vm(name)
            guard Files.exists(paths.spec) else { throw CLIError("no VM named '\(name)' (see `cevm ps`)") }
            for record in RecordStore(paths: paths).list() { out[record.id] = record }
        }
        for text in records {
            let record = try Restore.locate(text, home: home)
            out[record.id] = record
        }
        return out.values.sorted { $0.id < $1.id }
    }

    /// One model sample from a record's measured timings.
    static func sample(_ record: Record) -> Turnaround.CheckpointSample? { sample(record.manifest) }

    /// One model sample from a manifest, the lost progress from the
    /// host's estimate when the record has one; the guest's own progress
    /// is left unmeasured (the caller may know it from the guest's console).
    static func sample(_ m: RecordManifest) -> Turnaround.CheckpointSample? { ManifestSample.sample(m) }

    /// Seconds each measured restore of these VMs took (`cevm restore` records them).
    static func restoreTimes(home: Home, vms: [VMName]) -> [Double] {
        var times: [Double] = []
        for name in Set(vms) {
            guard let text = try? Files.readString(home.vm(name).restoreTimes) else { continue }
            for line in text.split(separator: "\n") {
                if let data = line.data(using: .utf8),
                    let entry = try? JSONDecoder().decode(Restore.Timing.self, from: data), entry.seconds.isFinite, entry.seconds >= 0
                {
                    times.append(entry.seconds)
                }
            }
        }
        return times
    }
}

extension Output {
    struct Combined: Encodable {
        var report: Turnaround.Report
        var predictions: [ReportCommand.Prediction]
        var records: [String]
    }
}

/// "90", "90s", "30m", "2h", "1d", "1.5h" → seconds.
func parseDuration(_ text: String, option: String) throws -> Double {
    var digits = text.trimmingCharacters(in: .whitespaces).lowercased()
    var unit = 1.0
    if let last = digits.last, let factor = ["s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0][String(last)] {
        unit = factor
        digits.removeLast()
    }
    guard let value = Double(digits), value.isFinite, value > 0, value * unit < 1e12 else {
        throw CLIError("\(option) '\(text)' is not a duration (examples: 90s, 30m, 2h, 3600)")
    }
    return value * unit
}
