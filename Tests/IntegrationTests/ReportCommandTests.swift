import CEVMSystem
import Foundation
import Records
import Testing
import VMStore

/// `cevm report` with the real binary, over records whose timings are known.
@Suite(.serialized, .enabled(if: Files.exists(CEVMHarness.binaryPath), "needs the cevm binary"))
struct ReportCommandTests {
    /// A stopped VM's directory and spec (no QEMU involved), for records to be written into.
    static func makeVM(_ cevm: borrowing CEVMHarness, _ vm: String) throws -> (VMSpec, VMPaths, RecordStore) {
        let home = Home(root: cevm.home)
        try home.prepare()
        let name = try VMName(vm)
        let paths = home.vm(name)
        try Files.makeDirectory(paths.directory, mode: 0o700)
        let spec = VMSpec(
            name: name, memoryMiB: 128, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35",
            boot: .kernel(kernel: "/k", initrd: nil, append: ""), disk: nil, bundledGuest: false)
        try paths.writeSpec(spec)
        return (spec, paths, RecordStore(paths: paths))
    }

    /// A VM with records of known timings (no QEMU involved).
    func seed(_ cevm: borrowing CEVMHarness) throws {
        let (spec, paths, store) = try Self.makeVM(cevm, "job")
        let name = spec.name
        // (mechanism, pause ms, downtime ms, durable ms, overlap ms)
        let rows: [(Mechanism, Double, Double?, Double, Double?)] = [
            (.stopAndSave, 300, nil, 350, nil), (.stopAndSave, 320, nil, 380, nil),
            (.cevm, 120, 110, 1200, 900), (.cevm, 140, 128, 1300, 1000),
            (.backgroundSnapshot, 40, 35, 700, 650), (.backgroundSnapshot, 50, 44, 720, 660),
        ]
        for (i, row) in rows.enumerated() {
            let id = "20260101-00000\(i)-000\(i)"
            let directory = try store.newRecordDirectory(id: id)
            try Files.writeAtomically([UInt8](repeating: 0, count: 1000), to: "\(directory)/memory.mig")
            var timings = RecordManifest.Timings(
                requestToPauseMs: 5, guestPauseMs: row.1, requestToDurableMs: row.3,
                pausedAt: "2026-01-01T00:00:0\(i).000000Z", resumedAt: "2026-01-01T00:00:0\(i).100000Z")
            timings.overlapMs = row.4
            let manifest = RecordManifest(
                id: id, vm: name, createdAt: timings.pausedAt, mechanism: row.0, parent: nil, spec: spec,
                qemu: .init(version: "7.2", package: ""),
                migration: .init(parameters: [:], capabilities: [:], totalTimeMs: nil, downtimeMs: row.2, streamBytes: 1000),
                timings: timings, files: [.init(name: "memory.mig", role: .memory, size: 1000, sha256: "00")], disk: nil)
            _ = try RecordStore.commit(manifest, in: directory)
        }
        // Two measured restores of 2 s and 4 s: the median restart is 4 s.
        try Files.writeAtomically(
            Array("{\"record\":\"a\",\"seconds\":2,\"at\":\"x\"}\n{\"record\":\"b\",\"seconds\":4,\"at\":\"y\"}\n".utf8),
            to: paths.restoreTimes)
    }

    @Test func fitsPredictsAndPlots() throws {
        let cevm = try CEVMHarness()
        try seed(cevm)
        let svg = "\(cevm.home)/plot.svg"
        let result = try cevm.run(["report", "job", "--job-time", "1h", "--checkpoints", "10", "--mtbf", "6h", "--svg", svg, "--json"])
        #expect(result.ok, "\(result.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
        let report = object["report"] as? [String: Any] ?? [:]
        #expect(report["format"] as? String == "cevm-turnaround-report")
        let terms = (report["model"] as? [String: Any])?["terms"] as? [[String: Any]] ?? []
        let values = Dictionary(terms.compactMap { t -> (String, Double)? in
            guard let term = t["term"] as? String, let value = t["seconds"] as? Double else { return nil }
            return (term, value)
        }, uniquingKeysWith: { a, _ in a })
        #expect(abs((values["T_cpt"] ?? 0) - 0.310) < 1e-9, "mean stop-and-save pause: \(values)")
        #expect(abs((values["T_cevm"] ?? 0) - 0.130) < 1e-9, "\(values)")
        #expect(abs((values["T_mg"] ?? 0) - 0.119) < 1e-9, "CEVM downtime stands in for T_mg: \(values)")
        let schedule = report["schedule"] as? [String: Any]
        #expect(schedule?["restart"] as? Double == 4, "the median measured restore")
        let predictions = object["predictions"] as? [[String: Any]] ?? []
        let cevmPrediction = predictions.first { $0["mechanism"] as? String == "cevm" }?["turnaround"] as? Double
        #expect(abs((cevmPrediction ?? 0) - (3600 + 10 * 0.130)) < 1e-6)
        let document = try Files.readString(svg)
        #expect(document.hasPrefix("<?xml") || document.hasPrefix("<svg"))
        #expect(document.contains("</svg>") && document.contains("cevm"))

        let table = try cevm.run(["report", "--job-time", "1h", "--interval", "10m"])
        #expect(table.ok && table.stdout.contains("Inequality") && table.stdout.contains("n=5"), "\(table.stdout)")
    }

    /// Records whose manifests carry the host's cost estimate: the terms
    /// charge it (pause included), so a background snapshot whose guest
    /// lost 1.2 s ranks behind a CEVM checkpoint that cost it 0.3 s even
    /// though its pause is shorter, and no term is called a lower bound.
    @Test func chargesTheHostEstimate() throws {
        let cevm = try CEVMHarness()
        let (spec, _, store) = try Self.makeVM(cevm, "est")
        let name = spec.name
        // (mechanism, pause ms, host-estimated loss ms; nil: an estimate that was unavailable)
        let rows: [(Mechanism, Double, Double?)] = [
            (.cevm, 50, 280), (.cevm, 60, 320), (.backgroundSnapshot, 4, 1150), (.backgroundSnapshot, 5, 1250),
            (.stopAndSave, 400, 410), (.stopAndSave, 420, nil),
        ]
        for (i, row) in rows.enumerated() {
            let id = "20260102-00000\(i)-000\(i)"
            let directory = try store.newRecordDirectory(id: id)
            try Files.writeAtomically([UInt8](repeating: 0, count: 1000), to: "\(directory)/memory.mig")
            var timings = RecordManifest.Timings(
                requestToPauseMs: 5, guestPauseMs: row.1, requestToDurableMs: 2000,
                pausedAt: "2026-01-02T00:00:0\(i).000000Z", resumedAt: "2026-01-02T00:00:0\(i).100000Z")
            timings.overlapMs = row.0 == .stopAndSave ? nil : 1900
            var cost = RecordManifest.Timings.Cost(estimator: "schedstat-run-time", samples: 40)
            if let lost = row.2 {
                cost.lostMs = lost
                cost.windowMs = 2000
                cost.rateBefore = 0.97
            } else {
                cost.unavailable = "the guest's vCPUs were idle before the checkpoint"
            }
            timings.cost = cost
            let manifest = RecordManifest(
                id: id, vm: name, createdAt: timings.pausedAt, mechanism: row.0, parent: nil, spec: spec,
                qemu: .init(version: "10.0", package: ""),
                migration: .init(parameters: [:], capabilities: [:], totalTimeMs: nil, downtimeMs: row.0 == .cevm ? row.1 - 5 : nil, streamBytes: 1000),
                timings: timings, files: [.init(name: "memory.mig", role: .memory, size: 1000, sha256: "00")], disk: nil)
            _ = try RecordStore.commit(manifest, in: directory)
        }
        let result = try cevm.run(["report", "est", "--json"])
        #expect(result.ok, "\(result.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
        let model = (object["report"] as? [String: Any])?["model"] as? [String: Any] ?? [:]
        let terms = model["terms"] as? [[String: Any]] ?? []
        func term(_ name: String) -> [String: Any] { terms.first { $0["term"] as? String == name } ?? [:] }
        let bg = term("T_bg")["seconds"] as? Double ?? 0, cevmTerm = term("T_cevm")["seconds"] as? Double ?? 0
        #expect(abs(bg - 1.2) < 1e-9, "\(terms)")
        #expect(abs(cevmTerm - 0.3) < 1e-9, "\(terms)")
        #expect(bg > cevmTerm)
        // Stop-and-save: one estimate (0.41 s), one without (its pause, 0.42 s).
        #expect(abs((term("T_cpt")["seconds"] as? Double ?? 0) - 0.415) < 1e-9)
        for name in ["T_bg", "T_cevm"] {
            let notes = term(name)["notes"] as? [String] ?? []
            #expect(!notes.contains { $0.contains("lower bound") }, "\(name): \(notes)")
        }
        let mgNotes = term("T_mg")["notes"] as? [String] ?? []
        #expect(mgNotes.contains { $0.contains("no real live migration was measured") }, "\(mgNotes)")
        let table = try cevm.run(["report", "est"])
        #expect(table.ok && table.stdout.contains("estimated from the host"), "\(table.stdout)")
    }

    @Test func badArgumentsAreRefusedByName() throws {
        let cevm = try CEVMHarness()
        let empty = try cevm.run(["report"])
        #expect(!empty.ok && empty.stderr.contains("no records"), "\(empty.stderr)")
        try seed(cevm)
        for (arguments, word) in [
            (["report", "--job-time", "soon"], "--job-time"), (["report", "--interval", "10m"], "--job-time"),
            (["report", "--mtbf", "-3h"], "--mtbf"), (["report", "--checkpoints", "0", "--job-time", "1h"], "--checkpoints"),
            (["report", "ghost"], "ghost"), (["report", "--svg", "\(cevm.home)/x.svg"], "--job-time"),
        ] {
            let result = try cevm.run(arguments)
            #expect(!result.ok && result.stderr.contains(word), "\(arguments): \(result.stderr)")
        }
    }
}
