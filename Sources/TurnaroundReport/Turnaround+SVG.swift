import Turnaround

extension Turnaround {
    /// What the plot shows and how large it is.
    public struct PlotOptions: Sendable, Hashable {
        /// Pixels, 300...10000.
        public var width: Double
        /// Pixels, 200...10000.
        public var height: Double
        /// Plain text; escaped. nil: "Turnaround against checkpoint interval".
        public var title: String?
        /// The x axis, seconds; nil: T_comp/200 to T_comp (under failures
        /// down to a third of the shortest best interval, up to 20× the
        /// longest), widened to show every measured run.
        public var intervalRange: ClosedRange<Double>?
        /// The curves to draw; nil: every mechanism the model has a term for.
        public var mechanisms: [Mechanism]?

        public init(
            width: Double = 820, height: Double = 480, title: String? = nil, intervalRange: ClosedRange<Double>? = nil,
            mechanisms: [Mechanism]? = nil
        ) {
            self.width = width
            self.height = height
            self.title = title
            self.intervalRange = intervalRange
            self.mechanisms = mechanisms
        }
    }

    /// A standalone SVG document: turnaround (y, linear) against checkpoint
    /// interval τ (x, logarithmic) for a job of `computeTime`, one curve per
    /// mechanism, with a legend.
    ///
    /// - Without `failures`: the failure-free T_comp + n(τ)·δ (+ T_o), a
    ///   staircase (n = ⌈T_comp/τ⌉ − 1); no interval is best (fewer
    ///   checkpoints are always faster), and the plot says so.
    /// - With `failures`: solid curves of the expected turnaround of cevm's
    ///   schedule, dashed failure-free curves beside them, and each
    ///   mechanism's best interval marked with a diamond.
    /// - `runs`: measured turnarounds as circles at their interval (or
    ///   T_comp/(n+1)), the model's prediction for each as a cross.
    ///
    /// Curves are clipped to the plot area. The y axis stops at 2·T_comp
    /// without failures, at T_comp + 4× the worst optimum's excess over
    /// T_comp with them, or higher to show every point; a curve that climbs
    /// past that leaves the frame. The x axis spans T_comp/200 to T_comp,
    /// reaching down to a third of the shortest best interval and, under
    /// failures, up to 20× the longest one only.
    public static func svg(
        _ model: FittedModel, computeTime: Double, failures: FailureModel? = nil, runs: [MeasuredRun] = [],
        options: PlotOptions = PlotOptions()
    ) throws(TurnaroundError) -> String {
        try Check.positiveSeconds(computeTime, "computeTime")
        for (i, run) in runs.enumerated() { try run.validate("runs[\(i)]") }
        guard options.width.isFinite, (300...10_000).contains(options.width) else {
            throw .outOfRange(field: "options.width", value: options.width, range: 300...10_000)
        }
        guard options.height.isFinite, (200...10_000).contains(options.height) else {
            throw .outOfRange(field: "options.height", value: options.height, range: 200...10_000)
        }
        if let range = options.intervalRange {
            try Check.positiveSeconds(range.lowerBound, "options.intervalRange.lowerBound")
            try Check.positiveSeconds(range.upperBound, "options.intervalRange.upperBound")
            guard range.upperBound > range.lowerBound else {
                throw .outOfRange(
                    field: "options.intervalRange.upperBound", value: range.upperBound,
                    range: range.lowerBound.nextUp...maximumSeconds)
            }
        }
        let mechanisms = options.mechanisms ?? model.mechanisms
        for mechanism in mechanisms { _ = try model.perCheckpointCost(mechanism) }

        var plot = Plot(model: model, computeTime: computeTime, failures: failures, runs: runs, options: options)
        try plot.prepare(mechanisms)
        return plot.render()
    }
}

/// The plot's data and layout; `render` writes the document.
private struct Plot {
    struct Curve {
        var mechanism: Turnaround.Mechanism
        var expected: Bool
        var points: [(x: Double, y: Double?)]
    }

    struct Point {
        var mechanism: Turnaround.Mechanism
        var x: Double
        var measured: Double
        var predicted: Double?
    }

    let model: Turnaround.FittedModel
    let computeTime: Double
    let failures: Turnaround.FailureModel?
    let runs: [Turnaround.MeasuredRun]
    let options: Turnaround.PlotOptions

    var mechanisms: [Turnaround.Mechanism] = []
    var curves: [Curve] = []
    var points: [Point] = []
    var best: [Turnaround.Mechanism: Turnaround.BestInterval] = [:]
    var xRange: (lo: Double, hi: Double) = (1, 2)
    var yRange: (lo: Double, hi: Double) = (0, 1)
    var yStep: Double = 1

    // Layout.
    var left: Double { 78 }
    var top: Double { 58 }
    var legendWidth: Double { 220 }
    var plotWidth: Double { options.width - left - legendWidth - 16 }
    var plotHeight: Double { options.height - top - 64 }

    init(
        model: Turnaround.FittedModel, computeTime: Double, failures: Turnaround.FailureModel?,
        runs: [Turnaround.MeasuredRun], options: Turnaround.PlotOptions
    ) {
        self.model = model
        self.computeTime = computeTime
        self.failures = failures
        self.runs = runs
        self.options = options
    }

    mutating func prepare(_ mechanisms: [Turnaround.Mechanism]) throws(TurnaroundError) {
        self.mechanisms = mechanisms
        let t = computeTime
        if let failures {
            // A schedule out of range (a tiny MTBF) leaves its curve unmarked.
            for mechanism in mechanisms where (try? model.perCheckpointCost(mechanism)) ?? 0 > 0 {
                best[mechanism] = try? Turnaround.bestInterval(
                    model, mechanism: mechanism, computeTime: t, failures: failures)
            }
        }
        for run in runs {
            let predicted = try? Turnaround.predict(
                model, mechanism: run.mechanism, computeTime: run.computeTime, checkpoints: run.checkpoints)
            points.append(
                Point(mechanism: run.mechanism, x: run.plottedInterval, measured: run.turnaround, predicted: predicted))
        }

        // x range.
        if let range = options.intervalRange {
            xRange = (range.lowerBound, range.upperBound)
        } else {
            var lo = t / 200
            var hi = t
            if let longest = best.values.map(\.interval).max() {
                // Under failures the interest lies around the optima: far
                // longer intervals only show the curves leaving the frame.
                hi = min(t, 20 * longest)
            }
            for b in best.values { lo = min(lo, b.interval / 3) }
            for p in points {
                lo = min(lo, p.x / 1.25)
                hi = max(hi, p.x * 1.25)
            }
            xRange = (max(lo, Turnaround.maximumSeconds / 1e24), min(max(hi, lo * 10), Turnaround.maximumSeconds))
        }

        // Sample x: log-spaced, plus both sides of every step n → n−1 (at
        // τ = T/k) when there are not too many.
        let logLo = Elementary.log10(xRange.lo)
        let logHi = Elementary.log10(xRange.hi)
        var xs: [Double] = (0...600).map { Elementary.exp10(logLo + (logHi - logLo) * Double($0) / 600) }
        let kLo = max(1, (t / xRange.hi).rounded(.up))
        let kHi = (t / xRange.lo).rounded(.down)
        if kHi >= kLo, kHi - kLo <= 600 {
            var k = kLo
            while k <= kHi {
                let step = t / k
                xs.append(step)
                xs.append(step * (1 - 1e-9))
                k += 1
            }
        }
        xs = xs.filter { $0 >= xRange.lo && $0 <= xRange.hi }.sorted()

        for mechanism in mechanisms {
            let delta = (try? model.perCheckpointCost(mechanism)) ?? 0
            let fixed = model.fixedOverhead(mechanism)
            var free: [(x: Double, y: Double?)] = []
            var expected: [(x: Double, y: Double?)] = []
            for x in xs {
                let n = try? Turnaround.checkpointCount(computeTime: t, interval: x)
                free.append((x, n.map { t + Double($0) * delta + fixed }))
                if let failures {
                    let e = try? Turnaround.expectedTurnaround(
                        computeTime: t, interval: x, checkpointCost: delta, failures: failures, fixedOverhead: fixed)
                    expected.append((x, e))
                }
            }
            curves.append(Curve(mechanism: mechanism, expected: false, points: free))
            if failures != nil { curves.append(Curve(mechanism: mechanism, expected: true, points: expected)) }
        }

        // y range.
        let pointValues = points.flatMap { [$0.measured] + ($0.predicted.map { [$0] } ?? []) }
        let curveValues = curves.flatMap { $0.points.compactMap(\.y) }.filter(\.isFinite)
        let bestValues = best.values.map(\.expectedTurnaround)
        // Without failures up to 2·T_comp; with them 4× the worst optimum's
        // excess over T_comp, so the minima are not flattened by the climb.
        let worstBest = bestValues.max().map { t + 4 * max($0 - t, 0.01 * t) }
        let cap = max(worstBest ?? 2 * t, (pointValues.max() ?? 0) * 1.05)
        var lo = min(t, (curveValues + pointValues).min() ?? t)
        var hi = min((curveValues + pointValues).max() ?? t, cap)
        hi = max(hi, pointValues.max() ?? hi)
        if !(hi > lo) { hi = lo + max(1, lo * 0.1) }
        let pad = (hi - lo) * 0.03
        lo = max(0, lo - pad)
        hi += pad
        yStep = Plot.niceStep((hi - lo) / 6)
        yRange = ((lo / yStep).rounded(.down) * yStep, (hi / yStep).rounded(.up) * yStep)
        if !(yRange.hi > yRange.lo) { yRange.hi = yRange.lo + yStep }
    }

    // Coordinates.
    func px(_ x: Double) -> Double {
        let logLo = Elementary.log10(xRange.lo)
        let logHi = Elementary.log10(xRange.hi)
        return left + (Elementary.log10(x) - logLo) / (logHi - logLo) * plotWidth
    }

    func py(_ y: Double) -> Double {
        let v = top + plotHeight - (y - yRange.lo) / (yRange.hi - yRange.lo) * plotHeight
        // Keep far-off values finite and near the frame: the clip hides them.
        return min(max(v, top - plotHeight), top + 2 * plotHeight)
    }

    static func niceStep(_ raw: Double) -> Double {
        guard raw > 0, raw.isFinite else { return 1 }
        let magnitude = Elementary.exp10(Elementary.log10(raw).rounded(.down))
        let f = raw / magnitude
        let nice: Double = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10
        return nice * magnitude
    }

    func xTicks() -> [Double] {
        let logLo = Elementary.log10(xRange.lo)
        let logHi = Elementary.log10(xRange.hi)
        let span = logHi - logLo
        let multipliers: [Double] = span <= 1.2 ? [1, 2, 3, 4, 5, 6, 7, 8, 9] : span <= 4 ? [1, 2, 5] : [1]
        var ticks: [Double] = []
        var decade = logLo.rounded(.down)
        while decade <= logHi.rounded(.up) {
            let base = Elementary.exp10(decade)
            for m in multipliers {
                let v = base * m
                if v >= xRange.lo * (1 - 1e-9), v <= xRange.hi * (1 + 1e-9) { ticks.append(v) }
            }
            decade += 1
        }
        return ticks
    }

    static func xLabel(_ v: Double) -> String {
        guard v < 1e7, v >= 1e-4 else { return Format.scientific(v, 1) }
        let decimals = max(0, -Int(Elementary.log10(v).rounded(.down)))
        return Format.fixed(v, decimals)
    }

    func yLabel(_ v: Double) -> String {
        var decimals = max(0, -Int((Elementary.log10(yStep) + 1e-9).rounded(.down)))
        let mantissa = yStep / Elementary.exp10(Elementary.log10(yStep).rounded(.down))
        if Swift.abs(mantissa - 2.5) < 1e-9 { decimals += 1 }
        return Format.fixed(v, decimals)
    }

    static func color(_ m: Turnaround.Mechanism) -> String {
        switch m {
        case .stopAndSave: "#d62728"
        case .migration: "#7f7f7f"
        case .cevm: "#1f77b4"
        case .backgroundSnapshot: "#2ca02c"
        }
    }

    static func n(_ v: Double) -> String { Format.fixed(v, 2) }

    func render() -> String {
        var s: [String] = []
        let w = options.width
        let h = options.height
        let title = options.title ?? "Turnaround against checkpoint interval"
        var subtitle = "T_comp = \(Format.seconds(computeTime))"
        if let failures {
            subtitle += " · MTBF \(Format.seconds(failures.mtbf)) · restart \(Format.seconds(failures.restart))"
        } else {
            subtitle += " · no failures"
        }
        let x0 = left
        let y0 = top
        let pw = plotWidth
        let ph = plotHeight

        s.append(##"<?xml version="1.0" encoding="UTF-8"?>"##)
        s.append(
            ##"<svg xmlns="http://www.w3.org/2000/svg" width="\##(Plot.n(w))" height="\##(Plot.n(h))" "##
                + ##"viewBox="0 0 \##(Plot.n(w)) \##(Plot.n(h))" font-family="sans-serif" font-size="12">"##)
        s.append("<title>\(xml(title))</title>")
        s.append("<desc>\(xml("cevm turnaround model (seed 001): " + subtitle))</desc>")
        s.append(
            ##"<defs><clipPath id="plot-area"><rect x="\##(Plot.n(x0))" y="\##(Plot.n(y0))" "##
                + ##"width="\##(Plot.n(pw))" height="\##(Plot.n(ph))"/></clipPath></defs>"##)
        s.append(
            ##"<rect class="background" x="0" y="0" width="\##(Plot.n(w))" height="\##(Plot.n(h))" fill="#ffffff"/>"##)
        s.append(
            ##"<text class="title" x="\##(Plot.n(x0))" y="24" font-size="15" font-weight="bold">\##(xml(title))</text>"##
        )
        s.append(##"<text class="subtitle" x="\##(Plot.n(x0))" y="42" fill="#555555">\##(xml(subtitle))</text>"##)

        // Grid, axes, ticks.
        s.append(##"<g class="grid" stroke="#e6e6e6" stroke-width="1">"##)
        let xTicks = xTicks()
        for v in xTicks {
            s.append(
                ##"<line x1="\##(Plot.n(px(v)))" y1="\##(Plot.n(y0))" x2="\##(Plot.n(px(v)))" y2="\##(Plot.n(y0 + ph))"/>"##
            )
        }
        var yTicks: [Double] = []
        var v = yRange.lo
        while v <= yRange.hi + yStep * 1e-6, yTicks.count < 50 {
            yTicks.append(v)
            v += yStep
        }
        for v in yTicks {
            s.append(
                ##"<line x1="\##(Plot.n(x0))" y1="\##(Plot.n(py(v)))" x2="\##(Plot.n(x0 + pw))" y2="\##(Plot.n(py(v)))"/>"##
            )
        }
        s.append("</g>")
        s.append(##"<g class="axes" stroke="#333333" stroke-width="1">"##)
        s.append(
            ##"<line x1="\##(Plot.n(x0))" y1="\##(Plot.n(y0 + ph))" x2="\##(Plot.n(x0 + pw))" y2="\##(Plot.n(y0 + ph))"/>"##
        )
        s.append(##"<line x1="\##(Plot.n(x0))" y1="\##(Plot.n(y0))" x2="\##(Plot.n(x0))" y2="\##(Plot.n(y0 + ph))"/>"##)
        for v in xTicks {
            s.append(
                ##"<line x1="\##(Plot.n(px(v)))" y1="\##(Plot.n(y0 + ph))" x2="\##(Plot.n(px(v)))" y2="\##(Plot.n(y0 + ph + 5))"/>"##
            )
        }
        for v in yTicks {
            s.append(
                ##"<line x1="\##(Plot.n(x0 - 5))" y1="\##(Plot.n(py(v)))" x2="\##(Plot.n(x0))" y2="\##(Plot.n(py(v)))"/>"##
            )
        }
        s.append("</g>")
        s.append(##"<g class="tick-labels" fill="#333333">"##)
        for v in xTicks {
            s.append(
                ##"<text class="x-tick" x="\##(Plot.n(px(v)))" y="\##(Plot.n(y0 + ph + 18))" text-anchor="middle">\##(xml(Plot.xLabel(v)))</text>"##
            )
        }
        for v in yTicks {
            s.append(
                ##"<text class="y-tick" x="\##(Plot.n(x0 - 8))" y="\##(Plot.n(py(v) + 4))" text-anchor="end">\##(xml(yLabel(v)))</text>"##
            )
        }
        s.append("</g>")
        s.append(
            ##"<text class="axis-label" x="\##(Plot.n(x0 + pw / 2))" y="\##(Plot.n(y0 + ph + 38))" text-anchor="middle">"##
                + "\(xml("checkpoint interval τ (s of compute, log scale)"))</text>")
        let yLabelX = 18.0
        let yLabelY = y0 + ph / 2
        s.append(
            ##"<text class="axis-label" x="\##(Plot.n(yLabelX))" y="\##(Plot.n(yLabelY))" text-anchor="middle" "##
                + ##"transform="rotate(-90 \##(Plot.n(yLabelX)) \##(Plot.n(yLabelY)))">\##(xml("turnaround T_vm (s)"))</text>"##
        )

        // Curves.
        s.append(##"<g class="curves" clip-path="url(#plot-area)" fill="none" stroke-width="2">"##)
        for curve in curves {
            var d = ""
            var pen = false
            for p in curve.points {
                guard let y = p.y, y.isFinite else {
                    pen = false
                    continue
                }
                d += (pen ? "L" : "M") + Plot.n(px(p.x)) + " " + Plot.n(py(y)) + " "
                pen = true
            }
            guard !d.isEmpty else { continue }
            let dashed = failures != nil && !curve.expected
            let kind = curve.expected ? "expected" : "failure-free"
            s.append(
                ##"<path class="curve" data-mechanism="\##(xml(curve.mechanism.rawValue))" data-kind="\##(kind)" "##
                    + ##"stroke="\##(Plot.color(curve.mechanism))"\##(dashed ? ##" stroke-dasharray="6 4" stroke-opacity="0.7""## : "") "##
                    + ##"d="\##(d.dropLast())"/>"##)
        }
        s.append("</g>")

        // Best intervals.
        if !best.isEmpty {
            s.append(##"<g class="best-intervals" clip-path="url(#plot-area)">"##)
            for mechanism in mechanisms {
                guard let b = best[mechanism] else { continue }
                let cx = px(b.interval)
                let cy = py(b.expectedTurnaround)
                let color = Plot.color(mechanism)
                s.append(
                    ##"<line class="best-line" data-mechanism="\##(xml(mechanism.rawValue))" x1="\##(Plot.n(cx))" y1="\##(Plot.n(cy))" "##
                        + ##"x2="\##(Plot.n(cx))" y2="\##(Plot.n(y0 + ph))" stroke="\##(color)" stroke-dasharray="2 3"/>"##
                )
                s.append(
                    ##"<path class="best" data-mechanism="\##(xml(mechanism.rawValue))" data-interval="\##(Format.significant(b.interval, 6))" "##
                        + ##"d="M\##(Plot.n(cx)) \##(Plot.n(cy - 7)) L\##(Plot.n(cx + 7)) \##(Plot.n(cy)) L\##(Plot.n(cx)) \##(Plot.n(cy + 7)) "##
                        + ##"L\##(Plot.n(cx - 7)) \##(Plot.n(cy)) Z" fill="\##(color)" stroke="#ffffff"/>"##)
            }
            s.append("</g>")
        }

        // Measured runs and their predictions.
        if !points.isEmpty {
            s.append(##"<g class="points" fill="none" stroke-width="1.6">"##)
            for p in points {
                let color = Plot.color(p.mechanism)
                let cx = px(p.x)
                if let predicted = p.predicted {
                    let cy = py(predicted)
                    s.append(
                        ##"<path class="predicted" data-mechanism="\##(xml(p.mechanism.rawValue))" stroke="\##(color)" "##
                            + ##"d="M\##(Plot.n(cx - 4)) \##(Plot.n(cy - 4)) L\##(Plot.n(cx + 4)) \##(Plot.n(cy + 4)) "##
                            + ##"M\##(Plot.n(cx - 4)) \##(Plot.n(cy + 4)) L\##(Plot.n(cx + 4)) \##(Plot.n(cy - 4))"/>"##
                    )
                }
                s.append(
                    ##"<circle class="measured" data-mechanism="\##(xml(p.mechanism.rawValue))" cx="\##(Plot.n(cx))" "##
                        + ##"cy="\##(Plot.n(py(p.measured)))" r="4.5" stroke="\##(color)"/>"##)
            }
            s.append("</g>")
        }

        // Legend.
        let lx = x0 + pw + 20
        var ly = y0 + 6
        s.append(##"<g class="legend">"##)
        for mechanism in mechanisms {
            let color = Plot.color(mechanism)
            s.append(
                ##"<line x1="\##(Plot.n(lx))" y1="\##(Plot.n(ly))" x2="\##(Plot.n(lx + 24))" y2="\##(Plot.n(ly))" stroke="\##(color)" stroke-width="2"/>"##
            )
            s.append(
                ##"<text class="legend-entry" data-mechanism="\##(xml(mechanism.rawValue))" x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly + 4))">"##
                    + "\(xml(mechanism.rawValue))</text>")
            var detail = "\(mechanism.term) = \(Format.seconds((try? model.perCheckpointCost(mechanism)) ?? 0))"
            if mechanism == .cevm, model.cevmFixedOverhead > 0 {
                detail += ", T_o = \(Format.seconds(model.cevmFixedOverhead))"
            }
            ly += 16
            s.append(
                ##"<text x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly + 4))" font-size="11" fill="#555555">\##(xml(detail))</text>"##
            )
            if let estimate = model.estimate(mechanism.term), let parts = estimate.components {
                // The cost's parts as a bar (pause solid, lost progress light),
                // scaled to the largest term, and how many samples back it.
                let widest = mechanisms.compactMap { model.estimate($0.term)?.seconds }.max() ?? 0
                let scale = widest > 0 ? 150 / widest : 0
                let pauseWidth = max(0, parts.guestPause.mean * scale), lostWidth = max(0, parts.lostProgress.mean * scale)
                ly += 10
                s.append(
                    ##"<rect class="cost-pause" data-mechanism="\##(xml(mechanism.rawValue))" x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly))" "##
                        + ##"width="\##(Plot.n(pauseWidth))" height="6" fill="\##(color)"/>"##)
                s.append(
                    ##"<rect class="cost-lost" data-mechanism="\##(xml(mechanism.rawValue))" x="\##(Plot.n(lx + 32 + pauseWidth))" y="\##(Plot.n(ly))" "##
                        + ##"width="\##(Plot.n(lostWidth))" height="6" fill="\##(color)" fill-opacity="0.35"/>"##)
                ly += 16
                let split = "pause \(Format.seconds(parts.guestPause.mean)) + lost \(Format.seconds(parts.lostProgress.mean))"
                var basis = "\(parts.guestPause.count) sample\(parts.guestPause.count == 1 ? "" : "s")"
                if parts.samplesWithHostEstimate > 0 { basis += ", \(parts.samplesWithHostEstimate) host-estimated" }
                if parts.samplesWithoutProgress > 0 { basis += ", \(parts.samplesWithoutProgress) lost unmeasured" }
                s.append(
                    ##"<text class="cost-parts" data-mechanism="\##(xml(mechanism.rawValue))" x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly))" "##
                        + ##"font-size="10" fill="#555555">\##(xml(split))</text>"##)
                ly += 12
                s.append(
                    ##"<text class="cost-samples" data-mechanism="\##(xml(mechanism.rawValue))" x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly))" "##
                        + ##"font-size="10" fill="#555555">\##(xml(basis))</text>"##)
            }
            if let b = best[mechanism] {
                ly += 14
                s.append(
                    ##"<text x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly + 4))" font-size="11" fill="#555555">"##
                        + "\(xml("best τ = \(Format.seconds(b.interval)) (n = \(b.checkpoints))"))</text>")
            }
            ly += 22
        }
        ly += 6
        if failures != nil {
            s.append(
                ##"<line x1="\##(Plot.n(lx))" y1="\##(Plot.n(ly))" x2="\##(Plot.n(lx + 24))" y2="\##(Plot.n(ly))" stroke="#333333" stroke-width="2"/>"##
            )
            s.append(
                ##"<text x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly + 4))" font-size="11">expected, with failures</text>"##
            )
            ly += 18
            s.append(
                ##"<line x1="\##(Plot.n(lx))" y1="\##(Plot.n(ly))" x2="\##(Plot.n(lx + 24))" y2="\##(Plot.n(ly))" stroke="#333333" stroke-width="2" stroke-dasharray="6 4"/>"##
            )
            s.append(##"<text x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly + 4))" font-size="11">no failures</text>"##)
            ly += 18
            s.append(
                ##"<path d="M\##(Plot.n(lx + 12)) \##(Plot.n(ly - 6)) L\##(Plot.n(lx + 18)) \##(Plot.n(ly)) L\##(Plot.n(lx + 12)) \##(Plot.n(ly + 6)) L\##(Plot.n(lx + 6)) \##(Plot.n(ly)) Z" fill="#333333"/>"##
            )
            s.append(##"<text x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly + 4))" font-size="11">best interval</text>"##)
            ly += 18
        }
        if !points.isEmpty {
            s.append(
                ##"<circle cx="\##(Plot.n(lx + 12))" cy="\##(Plot.n(ly))" r="4.5" fill="none" stroke="#333333" stroke-width="1.6"/>"##
            )
            s.append(##"<text x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly + 4))" font-size="11">measured run</text>"##)
            ly += 18
            s.append(
                ##"<path d="M\##(Plot.n(lx + 8)) \##(Plot.n(ly - 4)) L\##(Plot.n(lx + 16)) \##(Plot.n(ly + 4)) M\##(Plot.n(lx + 8)) \##(Plot.n(ly + 4)) L\##(Plot.n(lx + 16)) \##(Plot.n(ly - 4))" fill="none" stroke="#333333" stroke-width="1.6"/>"##
            )
            s.append(
                ##"<text x="\##(Plot.n(lx + 32))" y="\##(Plot.n(ly + 4))" font-size="11">model's prediction for it</text>"##
            )
        }
        s.append("</g>")

        // Footnotes.
        var notes: [String] = []
        if failures == nil {
            notes.append("Without an MTBF fewer checkpoints always finish sooner: no interval is best.")
        }
        let off = runs.filter { Swift.abs($0.computeTime - computeTime) > 0.05 * computeTime }.count
        if off > 0 {
            notes.append(
                "\(off) run(s) had a T_comp more than 5% away from \(Format.seconds(computeTime)); plotted as measured."
            )
        }
        for (i, note) in notes.enumerated() {
            s.append(
                ##"<text class="footnote" x="\##(Plot.n(x0))" y="\##(Plot.n(h - 8 - Double(notes.count - 1 - i) * 14))" font-size="11" fill="#555555">\##(xml(note))</text>"##
            )
        }
        s.append("</svg>")
        return s.joined(separator: "\n") + "\n"
    }
}

/// Text and attribute values made safe for XML: the five predefined
/// entities, and characters XML 1.0 forbids (controls other than tab, LF,
/// CR; U+FFFE, U+FFFF) replaced by U+FFFD.
func xml(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for scalar in text.unicodeScalars {
        switch scalar {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&apos;"
        case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
        default:
            if scalar.value < 0x20 || scalar.value == 0xFFFE || scalar.value == 0xFFFF {
                out += "\u{FFFD}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out
}
