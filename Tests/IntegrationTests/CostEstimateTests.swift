import CEVMSystem
import Foundation
import Testing

/// The host-side cost estimate end to end: a write-heavy guest (the
/// bundled guest's job mode, rewriting 256 pages of a 192 MiB working set
/// per unit) pinned to one CPU, checkpointed twice by background snapshot
/// and twice by CEVM (dedicated). Every record carries the estimate, and
/// the report charges each mechanism the mean of its records' estimates
/// (never less than the pause) and ranks them as the estimates do.
///
/// Which of the two costs more is not asserted: on a 2-CPU host shared with
/// other work, CEVM dedicated's "free" CPU is not free, and its pre-copy
/// of this guest then took 10–15 s and cost the guest 7–10 s, against
/// 1–1.2 s for the background snapshot (Docs/turnaround.md, "The host-side
/// estimate"), where Docs/benchmarks.md measured T_cevm 0.27 s (dedicated)
/// against T_bg 1.49 s on a quieter host.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct CostEstimateTests {
    func checkpoint(_ cevm: borrowing CEVMHarness, _ name: String, _ extra: [String]) throws -> [String: Any] {
        let result = try cevm.run(["checkpoint", name, "--json"] + extra)
        guard result.ok, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
            let manifest = object["manifest"] as? [String: Any]
        else { throw HarnessError("checkpoint \(extra) failed: \(result.stderr)") }
        return manifest
    }

    @Test func everyRecordCarriesTheEstimateAndTheReportChargesIt() throws {
        guard try Affinity.available().cpus.count >= 2 else { return }
        let cevm = try CEVMHarness()
        let run = try cevm.run([
            "run", "writer", "--accel", "tcg", "--memory", "512M", "--cpuset", "0", "--append",
            "cevm.mem=192 cevm.pages=256 cevm.disk=0 cevm.tick=100 cevm.verify=256 cevm.job=1000000000000",
        ])
        #expect(run.ok, "\(run.stderr)")
        defer { _ = try? cevm.run(["stop", "writer"]) }
        // Per mechanism: max(estimated loss, pause), as the report charges it.
        var charged: [String: [Double]] = [:]
        for round in 0..<2 {
            for (label, extra) in [
                ("background-snapshot", ["--mechanism", "background-snapshot"]),
                ("cevm", ["--mechanism", "cevm", "--policy", "dedicated"]),
            ] {
                // Undisturbed running first: the estimate's baseline is the 2 s before the request.
                Thread.sleep(forTimeInterval: 3)
                let manifest = try checkpoint(cevm, "writer", extra)
                let timings = manifest["timings"] as? [String: Any] ?? [:]
                let cost = try #require(timings["cost"] as? [String: Any], "round \(round) \(label): no cost in \(timings)")
                #expect(cost["estimator"] as? String == "schedstat-run-time")
                let lostMs = try #require(cost["lostMs"] as? Double, "\(label): \(cost)")
                let windowMs = try #require(cost["windowMs"] as? Double)
                let pauseMs = timings["guestPauseMs"] as? Double ?? 0
                // The window runs from the request to the durable record (and
                // at least 0.2 s past the resume).
                #expect(windowMs >= (timings["requestToDurableMs"] as? Double ?? 0) - 1, "\(label): \(cost)")
                #expect((cost["samples"] as? Int ?? 0) >= 10, "\(label): \(cost)")
                #expect((cost["rateBefore"] as? Double ?? 0) > 0.05, "a busy guest: \(cost)")
                // The loss can be below the pause, even negative: on a shared host the
                // vCPU's share of its CPU before the request need not hold through the
                // window (Docs/turnaround.md); the report then charges the pause.
                #expect(lostMs <= windowMs + 1, "\(label): \(cost)")
                if label == "cevm" { #expect(cost["threads"] as? Int == 2, "Old_VM's and New_VM's vCPU: \(cost)") }
                charged[label, default: []].append(max(lostMs, pauseMs) / 1000)
            }
        }
        let bg = (charged["background-snapshot"] ?? []).reduce(0, +) / 2, dedicated = (charged["cevm"] ?? []).reduce(0, +) / 2
        // Printed for the run's log: which of the two cost more on this host, in this run.
        print("cost estimate: background-snapshot charged \(charged["background-snapshot"] ?? []) s (mean \(bg)), "
            + "cevm dedicated \(charged["cevm"] ?? []) s (mean \(dedicated))")

        let report = try cevm.run(["report", "writer", "--json"])
        #expect(report.ok, "\(report.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(report.stdout.utf8)) as? [String: Any] ?? [:]
        let terms = ((object["report"] as? [String: Any])?["model"] as? [String: Any])?["terms"] as? [[String: Any]] ?? []
        func term(_ name: String) -> [String: Any] { terms.first { $0["term"] as? String == name } ?? [:] }
        let tBg = term("T_bg")["seconds"] as? Double ?? 0, tCevm = term("T_cevm")["seconds"] as? Double ?? 0
        #expect(abs(tBg - bg) < 1e-6, "T_bg \(tBg) is the mean charged \(charged["background-snapshot"] ?? [])")
        #expect(abs(tCevm - dedicated) < 1e-6, "T_cevm \(tCevm) is the mean charged \(charged["cevm"] ?? [])")
        #expect((tBg > tCevm) == (bg > dedicated))
        for name in ["T_bg", "T_cevm"] {
            let components = term(name)["components"] as? [String: Any] ?? [:]
            #expect(components["samplesWithHostEstimate"] as? Int == 2, "\(name): \(components)")
            #expect(!(term(name)["notes"] as? [String] ?? []).contains { $0.contains("lower bound") })
        }
    }
}
