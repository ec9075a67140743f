import CEVMSystem
import Foundation
import Testing

/// The host-side cost estimate end to end: a write-heavy guest (the
/// bundled guest's job mode, rewriting 256 pages of a 192 MiB working set
/// per unit, 2 GiB of RAM) pinned to one CPU, checkpointed twice by
/// background snapshot and twice by CEVM (dedicated). Every record carries
/// the estimate; the background snapshot is charged more than CEVM, and the
/// report charges each mechanism the mean of its records' estimates (never
/// less than the pause) and ranks them so.
///
/// Why the background snapshot costs more here: QEMU's snapshot thread
/// shares the guest's CPU (every QEMU thread is pinned to it) for as long
/// as it takes to write the whole RAM, and the guest's first write to each
/// page not yet saved waits for it; CEVM dedicated does its copying on the
/// other CPU and costs the guest its pause and a cold New_VM. The
/// snapshot's cost grows with the RAM it writes, CEVM's hardly: at 2 GiB
/// the two stay apart (this test, debug build, two runs on this machine
/// kind: background snapshot 2.44–3.31 s, CEVM dedicated 0.53–1.56 s; at
/// 512 MiB and 1 GiB single checkpoints came within 0.1–0.2 s of each other;
/// Docs/turnaround.md). On a host whose other
/// CPU is busy with other work, CEVM dedicated's CPU is not free and the
/// order can flip (Docs/turnaround.md, "Where the costs come from here"):
/// the tests run one at a time.
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
            "run", "writer", "--accel", "tcg", "--memory", "2G", "--cpuset", "0", "--append",
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
        // Printed for the run's log.
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
        #expect(bg > dedicated, "a write-heavy guest's background snapshot costs it more than CEVM dedicated: \(charged)")
        #expect(tBg > tCevm, "the report ranks them so: T_bg \(tBg) s, T_cevm \(tCevm) s")
        for name in ["T_bg", "T_cevm"] {
            let components = term(name)["components"] as? [String: Any] ?? [:]
            #expect(components["samplesWithHostEstimate"] as? Int == 2, "\(name): \(components)")
            #expect(!(term(name)["notes"] as? [String] ?? []).contains { $0.contains("lower bound") })
        }
    }
}
