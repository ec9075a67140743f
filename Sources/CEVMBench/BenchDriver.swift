import CEVMSystem
import Foundation
import Supervisor

/// A benchmark that drives the cevm binary itself, as a user would, with a
/// private `CEVM_HOME`, and stops early on SIGINT/SIGTERM.
protocol BenchDriver: Sendable {
    /// The private CEVM_HOME.
    var home: String { get }
    var stop: AsyncSignal { get }
    /// Stops every VM the benchmark started (best effort).
    func cleanUp() async
}

/// A benchmark's result: JSON, or a table for a terminal.
protocol BenchReport: Encodable {
    func text() -> String
}

/// A target of an issue, evaluated on measured figures (never asserted).
struct BenchTarget: Encodable {
    var name: String
    var value: String
    var required: String
    var met: Bool

    /// The "Targets" table, preceded by a blank line; nothing for none.
    static func lines(_ targets: [BenchTarget]) -> [String] {
        guard !targets.isEmpty else { return [] }
        var rows = [["target", "value", "required", ""]]
        for t in targets { rows.append([t.name, t.value, t.required, t.met ? "met" : "not met"]) }
        return ["", "Targets", table(rows)]
    }
}

struct CommandOutput {
    var status: ExitStatus
    var stdout: String
    var stderr: String
}

extension BenchDriver {
    /// Runs `measure`, then, whatever it did, stops what it started and
    /// removes the CEVM_HOME (unless `keep`), and prints the report.
    func measureAndReport<Report: BenchReport>(keep: Bool, json: Bool, _ measure: () async throws -> Report) async throws {
        let result: Result<Report, any Error>
        do { result = .success(try await measure()) } catch { result = .failure(error) }
        await cleanUp()
        if keep {
            StandardError.write("cevm: the benchmark's CEVM_HOME is kept in \(home)\n")
        } else {
            BenchScratch.remove(home)
        }
        BenchOutput.endProgress()
        let report = try result.get()
        if json { return try BenchOutput.json(report) }
        BenchOutput.line(report.text())
    }

    var environment: [String: String] {
        var environment = Executables.currentEnvironment()
        environment["CEVM_HOME"] = home
        return environment
    }

    func checkStop() throws {
        if stop.fired { throw BenchError("interrupted") }
    }

    /// Sleeps, returning early (with an error) on SIGINT/SIGTERM.
    func pause(_ seconds: Double) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            try checkStop()
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Runs `cevm ARGS` with the private CEVM_HOME.
    func cevm(_ arguments: [String], timeout: Duration = .seconds(900)) async throws -> CommandOutput {
        let out = "\(home)/.cmd-\(UInt32.random(in: 0...UInt32.max)).out"
        let err = out + ".err"
        defer {
            Files.remove(out)
            Files.remove(err)
        }
        let child = try ChildProcess.spawn(
            Executables.currentExecutable(), arguments: arguments, environment: environment, stdout: .truncateFile(out),
            stderr: .truncateFile(err))
        var status = await child.wait(timeout: timeout)
        if status == nil { status = await child.terminate(grace: .seconds(10)) }
        return CommandOutput(
            status: status ?? .exited(-1), stdout: (try? Files.readString(out)) ?? "",
            stderr: ((try? Files.readString(err)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines))
    }

    func cevmChecked(_ arguments: [String], timeout: Duration = .seconds(900)) async throws -> String {
        let output = try await cevm(arguments, timeout: timeout)
        guard output.status.succeeded else {
            throw BenchError("cevm \(arguments.joined(separator: " ")) \(output.status): \(output.stderr)")
        }
        return output.stdout
    }
}

/// The bundled guest's progress, read from a console log: every
/// `cevm-tick counter=` line with the host time it arrived (Docs/guest.md).
enum ConsoleProgress {
    typealias Tick = (time: Double, counter: Double)

    /// (host time, counter) of every `cevm-tick` line, in file order.
    static func ticks(_ path: String) -> [Tick] {
        lines(path).compactMap { time, text in
            guard text.hasPrefix("cevm-tick counter=") else { return nil }
            let rest = text.dropFirst("cevm-tick counter=".count)
            return Double(rest.prefix(while: { $0.isNumber })).map { (time, $0) }
        }
    }

    /// The host time of the first line starting with `prefix`.
    static func firstLine(_ path: String, startingWith prefix: String) -> Double? {
        lines(path).first { $0.text.hasPrefix(prefix) }?.time
    }

    /// Every timestamped line: (host time, text).
    static func lines(_ path: String) -> [(time: Double, text: Substring)] {
        guard let text = try? Files.readString(path, limit: 512 << 20) else { return [] }
        var out: [(Double, Substring)] = []
        for line in text.split(separator: "\n") {
            guard let space = line.firstIndex(of: " "), let time = Timestamp.parse(line[..<space]) else { continue }
            out.append((time, line[line.index(after: space)...]))
        }
        return out
    }

    /// The counter at host time `t`, interpolated linearly between the
    /// lines around it in the guest's running time: host time minus the
    /// part of `pause` (the checkpoint's pause, from its manifest) before
    /// `t`. A line interval that spans the pause then credits no progress
    /// to the pause, which the guest spent stopped.
    static func counter(at t: Double, in ticks: [Tick], pause: (Double, Double)?) -> Double? {
        guard let first = ticks.first, let last = ticks.last, t >= first.time, t <= last.time else { return nil }
        func running(_ time: Double) -> Double {
            guard let (from, to) = pause, from < time else { return time }
            return time - (min(time, to) - from)
        }
        var low = 0, high = ticks.count - 1
        while high - low > 1 {
            let mid = (low + high) / 2
            if ticks[mid].time <= t { low = mid } else { high = mid }
        }
        let a = ticks[low], b = ticks[high]
        let span = running(b.time) - running(a.time)
        if span <= 0 { return b.counter }
        return a.counter + (b.counter - a.counter) * (running(t) - running(a.time)) / span
    }

    /// Units per host second from `start` to `end`.
    static func rate(from start: Double, to end: Double, in ticks: [Tick], pause: (Double, Double)? = nil) -> Double? {
        guard end > start, let a = counter(at: start, in: ticks, pause: pause), let b = counter(at: end, in: ticks, pause: pause) else {
            return nil
        }
        return (b - a) / (end - start)
    }

    /// The last console lines that are not progress lines (a panic's headline first).
    static func tail(_ path: String) -> String {
        let lines = lines(path).map { String($0.text) }.filter { !$0.hasPrefix("cevm-") }
        var tail = Array(lines.suffix(6))
        if let panic = lines.last(where: { $0.contains("Kernel panic") || $0.contains("RIP:") }), !tail.contains(panic) {
            tail.insert(panic, at: 0)
        }
        return tail.map { "  " + $0 }.joined(separator: "\n")
    }
}
