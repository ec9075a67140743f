import Turnaround

extension Turnaround {
    /// The report as aligned plain text for a terminal: terms with their
    /// spread, missing terms, run regressions, the inequality, validation
    /// and the schedule. Seconds in columns have three decimals.
    public static func table(_ report: Report) -> String {
        var out: [String] = []
        let model = report.model
        out.append("Turnaround model (seed 001): \(model.sampleCount) checkpoint sample(s), \(model.runCount) run(s)")
        out.append("  stop-and-save  T_vm = T_comp + n·T_cpt        migration  T_vm = T_comp + n·T_mg")
        out.append("  CEVM           T_vm = T_comp + n·T_cevm + T_o  background T_vm = T_comp + n·T_bg")
        out.append("")

        var terms = TextTable([
            ("term", .left), ("value (s)", .right), ("± se", .right), ("sd", .right), ("min", .right),
            ("max", .right), ("count", .right), ("pause", .right), ("lost", .right), ("to durable", .right),
            ("from", .left),
        ])
        for e in model.terms {
            terms.add([
                e.term.rawValue, Format.column(e.seconds), Format.column(e.standardError),
                Format.column(e.spread?.standardDeviation), Format.column(e.spread?.minimum),
                Format.column(e.spread?.maximum), e.spread.map { String($0.count) } ?? "-",
                Format.column(e.components?.guestPause.mean), Format.column(e.components?.lostProgress.mean),
                Format.column(e.components?.timeToDurable.mean), e.basis.rawValue,
            ])
        }
        out.append(terms.render())
        out.append(
            "pause, lost, to durable: means of the guest pause, the progress lost during the overlap, request to durable"
        )
        for e in model.terms { out.append("\(e.term): \(e.source)") }
        for m in model.missing { out.append("missing \(m.term): \(m.reason)") }
        let termNotes = model.terms.flatMap { e in e.notes.map { "\(e.term): \($0)" } } + model.notes
        if !termNotes.isEmpty {
            out.append("notes:")
            for note in termNotes { out.append("  - \(note)") }
        }

        if !model.regressions.isEmpty {
            out.append("")
            out.append("Runs: T_vm − T_comp = intercept + slope·n (least squares)")
            var table = TextTable([
                ("mechanism", .left), ("runs", .right), ("n", .left), ("slope (s)", .right), ("± se", .right),
                ("term (s)", .right), ("intercept (s)", .right), ("± se", .right), ("residual sd", .right),
            ])
            for r in model.regressions {
                table.add([
                    r.mechanism.rawValue, String(r.runs), Format.list(r.checkpointCounts), Format.column(r.slope),
                    Format.column(r.slopeStandardError), Format.column(model.estimate(r.mechanism.term)?.seconds),
                    Format.column(r.intercept), Format.column(r.interceptStandardError),
                    Format.column(r.residualStandardDeviation),
                ])
            }
            out.append(table.render())
        }

        if !report.inequality.isEmpty {
            out.append("")
            out.append("Inequality T_mg ≤ T_cevm + T_o/n ≤ T_cpt")
            for check in report.inequality {
                out.append("  \(check.summary)")
                for side in [check.lower, check.upper] where side.status != .holds || side.withinNoise {
                    out.append("    \(side.message)")
                }
            }
        }

        if !report.validation.rows.isEmpty {
            out.append("")
            out.append("Validation: predicted against measured")
            var table = TextTable([
                ("mechanism", .left), ("n", .right), ("T_comp (s)", .right), ("measured (s)", .right),
                ("predicted (s)", .right), ("error (s)", .right), ("error", .right), ("of overhead", .right),
                ("", .left),
            ])
            for row in report.validation.rows {
                var remark = row.note ?? ""
                if row.usedInFit { remark = "fed T_o" + (remark.isEmpty ? "" : "; " + remark) }
                table.add([
                    row.mechanism.rawValue, String(row.checkpoints), Format.column(row.computeTime),
                    Format.column(row.measured), Format.column(row.predicted), Format.column(row.errorSeconds),
                    row.errorPercent.map(Format.percent) ?? "-", row.overheadErrorPercent.map(Format.percent) ?? "-",
                    remark,
                ])
            }
            out.append(table.render())
            for s in report.validation.summaries {
                var line =
                    "  \(s.mechanism): \(s.runs) run(s), mean |error| \(Format.magnitudePercent(s.meanAbsoluteErrorPercent)), "
                    + "max \(Format.magnitudePercent(s.maximumAbsoluteErrorPercent))"
                if let o = s.meanAbsoluteOverheadErrorPercent {
                    line += ", mean |error| of overhead \(Format.magnitudePercent(o))"
                }
                out.append(line)
            }
        }

        if let schedule = report.schedule {
            out.append("")
            var heading =
                "Checkpoint interval under failures: MTBF \(Format.seconds(schedule.mtbf)), "
                + "restart \(Format.seconds(schedule.restart))"
            if let t = schedule.computeTime { heading += ", T_comp \(Format.seconds(t))" }
            out.append(heading)
            var table = TextTable([
                ("mechanism", .left), ("δ (s)", .right), ("Young (s)", .right), ("Daly (s)", .right),
                ("chosen", .left), ("best τ (s)", .right), ("n", .right), ("expected (s)", .right),
                ("at chosen (s)", .right), ("no failures (s)", .right),
            ])
            for e in schedule.entries {
                table.add([
                    e.mechanism.rawValue, Format.column(e.checkpointCost), Format.column(e.choice.young),
                    Format.column(e.choice.daly), e.choice.formula.rawValue, Format.column(e.best?.interval),
                    e.best.map { String($0.checkpoints) } ?? "-", Format.column(e.best?.expectedTurnaround),
                    Format.column(e.best?.expectedTurnaroundAtChoice), Format.column(e.best?.failureFreeTurnaround),
                ])
            }
            out.append(table.render())
            for e in schedule.entries { out.append("  \(e.mechanism): \(e.choice.reason)") }
        }

        if !report.notes.isEmpty {
            out.append("")
            for note in report.notes { out.append("note: \(note)") }
        }
        return out.joined(separator: "\n") + "\n"
    }
}
