import Foundation
import Testing
import Turnaround
import TurnaroundReport

#if canImport(FoundationXML)
    import FoundationXML
#endif

@Suite("Report, table, JSON and SVG")
struct RenderTests {
    static func fixture() throws -> (Turnaround.FittedModel, [Run]) {
        var rng = SeededGenerator(seed: 7)
        var samples: [Sample] = []
        for _ in 0..<6 {
            samples.append(
                Sample(
                    mechanism: .stopAndSave, guestPause: 0.4 + Double.random(in: -0.03...0.03, using: &rng),
                    timeToDurable: 0.6, bytes: 140_000_000))
            let pause = 0.06 + Double.random(in: -0.01...0.01, using: &rng)
            samples.append(
                Sample(
                    mechanism: .cevm, guestPause: pause, migrationDowntime: pause * 0.8, migrationTotal: 0.7,
                    timeToDurable: 2.5, overlap: 1.8, progressDuringOverlap: 0.95, bytes: 150_000_000))
            samples.append(
                Sample(
                    mechanism: .backgroundSnapshot, guestPause: 0.004, timeToDurable: 1.6, overlap: 1.6,
                    progressDuringOverlap: 0.9))
        }
        var runs: [Run] = []
        for n in [0, 4, 9, 19] {
            let cevmCost = 0.06 + 1.8 * 0.05
            runs.append(
                Run(
                    mechanism: .cevm, checkpoints: n,
                    turnaround: 600 + Double(n) * cevmCost + 1.5 + Double.random(in: -0.2...0.2, using: &rng),
                    computeTime: 600))
            runs.append(
                Run(
                    mechanism: .stopAndSave, checkpoints: n,
                    turnaround: 600 + Double(n) * 0.41 + Double.random(in: -0.2...0.2, using: &rng), computeTime: 600,
                    interval: 600 / Double(n + 1)))
        }
        return (try Turnaround.fit(samples: samples, runs: runs), runs)
    }

    @Test("the table shows every section, aligned")
    func table() throws {
        let (model, runs) = try Self.fixture()
        let report = try Turnaround.report(
            model, runs: runs, computeTime: 600, failures: .init(mtbf: 3600, restart: 30))
        let text = Turnaround.table(report)
        for needle in [
            "T_cpt", "T_mg", "T_cevm", "T_bg", "T_o", "Inequality T_mg ≤ T_cevm + T_o/n ≤ T_cpt", "at n = 4:",
            "Validation: predicted against measured", "fed T_o", "mean |error|", "MTBF 3600 s", "Young (s)", "Daly (s)",
            "best τ (s)", "Runs: T_vm − T_comp",
        ] {
            #expect(text.contains(needle), "missing \(needle)")
        }
        // Columns line up: in the terms table every row starts its value column at the same place.
        let lines = text.split(separator: "\n").map(String.init)
        let header = try #require(lines.first { $0.hasPrefix("term") })
        let valueEnd = try #require(header.range(of: "value (s)")).upperBound
        let column = header.distance(from: header.startIndex, to: valueEnd)
        for line in lines where line.hasPrefix("T_") && !line.contains(":") {
            let prefix = String(line.prefix(column))
            #expect(prefix.last?.isNumber == true, "misaligned: \(line)")
        }
        #expect(!lines.contains { $0.hasSuffix(" ") })
    }

    @Test("the report encodes to JSON with stable field names and decodes back")
    func json() throws {
        let (model, runs) = try Self.fixture()
        let report = try Turnaround.report(
            model, runs: runs, inequalityAt: [1, 10], computeTime: 600, failures: .init(mtbf: 3600))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(report)
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(
            Set(object.keys) == ["format", "formatVersion", "model", "inequality", "validation", "schedule", "notes"])
        #expect(object["format"] as? String == "cevm-turnaround-report")
        #expect(object["formatVersion"] as? Int == 1)
        let modelObject = try #require(object["model"] as? [String: Any])
        #expect(Set(modelObject.keys) == ["terms", "missing", "regressions", "sampleCount", "runCount", "notes"])
        let terms = try #require(modelObject["terms"] as? [[String: Any]])
        #expect(terms.map { $0["term"] as? String } == ["T_cpt", "T_mg", "T_cevm", "T_bg", "T_o"])
        #expect(terms[0]["basis"] as? String == "samples")
        let spread = try #require(terms[0]["spread"] as? [String: Any])
        #expect(Set(spread.keys) == ["count", "mean", "standardDeviation", "minimum", "maximum"])
        let inequality = try #require(object["inequality"] as? [[String: Any]])
        #expect(inequality.map { $0["checkpoints"] as? Int } == [1, 10])
        let lower = try #require(inequality[0]["lower"] as? [String: Any])
        #expect(Set(lower.keys).isSuperset(of: ["status", "margin", "withinNoise", "message"]))
        let schedule = try #require(object["schedule"] as? [String: Any])
        let entries = try #require(schedule["entries"] as? [[String: Any]])
        #expect(
            entries.compactMap { $0["mechanism"] as? String } == [
                "stop-and-save", "migration", "cevm", "background-snapshot",
            ])
        let choice = try #require(entries[0]["choice"] as? [String: Any])
        #expect(["young", "daly"].contains(choice["formula"] as? String))
        let decoded = try JSONDecoder().decode(Turnaround.Report.self, from: data)
        #expect(decoded == report)
    }

    static func svgDocument(failures: Turnaround.FailureModel?, title: String? = nil) throws -> String {
        let (model, runs) = try fixture()
        return try Turnaround.svg(model, computeTime: 600, failures: failures, runs: runs, options: .init(title: title))
    }

    @Test("the SVG is well-formed XML with curves, points, axes, legend and best intervals")
    func svg() throws {
        let svg = try Self.svgDocument(failures: .init(mtbf: 3600, restart: 30))
        #expect(svg.hasPrefix("<?xml"))
        #expect(svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        let elements = try XMLCheck.parse(svg)
        #expect(elements.first == "svg")
        // Four mechanisms, each a failure-free and an expected curve.
        #expect(XMLCheck.count(svg, "class=\"curve\"") == 8)
        for m in Turnaround.Mechanism.allCases {
            #expect(svg.contains("data-mechanism=\"\(m.rawValue)\" data-kind=\"expected\""))
            #expect(svg.contains("class=\"legend-entry\" data-mechanism=\"\(m.rawValue)\""))
        }
        #expect(XMLCheck.count(svg, "<circle class=\"measured\"") == 8)
        #expect(XMLCheck.count(svg, "<path class=\"predicted\"") == 8)
        #expect(XMLCheck.count(svg, "<path class=\"best\"") == 4)
        #expect(XMLCheck.count(svg, "class=\"x-tick\"") >= 3)
        #expect(XMLCheck.count(svg, "class=\"y-tick\"") >= 3)
        #expect(svg.contains("checkpoint interval τ (s of compute, log scale)"))
        #expect(svg.contains("turnaround T_vm (s)"))
        #expect(svg.contains("MTBF 3600 s"))
        #expect(!svg.contains("nan") && !svg.contains("\"inf") && !svg.contains("-inf"))
    }

    @Test("the well-formedness checks reject broken XML and pass the plot")
    func xmlCheckWorks() throws {
        for broken in ["<svg><g></svg>", "<svg a=\"1></svg>", "<svg>a & b</svg>", "<svg>"] {
            #expect(throws: (any Error).self) { try XMLCheck.parse(broken) }
        }
        #expect(throws: (any Error).self) { try XMLCheck.structural("<svg><g></svg>") }
        let svg = try Self.svgDocument(failures: .init(mtbf: 3600, restart: 30))
        let structural = try XMLCheck.structural(svg)
        #expect(structural == (try XMLCheck.parse(svg)))
    }

    @Test("without an MTBF: staircase curves only, no best interval, and the plot says why")
    func svgWithoutFailures() throws {
        let svg = try Self.svgDocument(failures: nil)
        _ = try XMLCheck.parse(svg)
        #expect(XMLCheck.count(svg, "class=\"curve\"") == 4)
        #expect(XMLCheck.count(svg, "data-kind=\"failure-free\"") == 4)
        #expect(XMLCheck.count(svg, "<path class=\"best\"") == 0)
        #expect(svg.contains("no interval is best"))
    }

    @Test("runs of another T_comp are drawn as measured and counted in a footnote")
    func svgOtherComputeTime() throws {
        let (model, runs) = try Self.fixture()
        let svg = try Turnaround.svg(model, computeTime: 900, runs: runs, options: .init(mechanisms: [.cevm]))
        _ = try XMLCheck.parse(svg)
        #expect(XMLCheck.count(svg, "class=\"curve\"") == 1)
        #expect(XMLCheck.count(svg, "<circle class=\"measured\"") == runs.count)
        #expect(svg.contains("\(runs.count) run(s) had a T_comp more than 5% away from 900 s"))
    }

    @Test("text going into the SVG is escaped")
    func svgEscapes() throws {
        let hostile = "<script>alert('x')</script> & \"quotes\" \u{1}"
        let svg = try Self.svgDocument(failures: nil, title: hostile)
        _ = try XMLCheck.parse(svg)
        #expect(!svg.contains("<script>"))
        #expect(svg.contains("&lt;script&gt;alert(&apos;x&apos;)&lt;/script&gt; &amp; &quot;quotes&quot; \u{FFFD}"))
    }
}

/// Well-formedness: FoundationXML's parser where it exists, else a
/// structural check of tags, nesting and attribute quoting.
enum XMLCheck {
    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    static func count(_ text: String, _ needle: String) -> Int {
        text.components(separatedBy: needle).count - 1
    }

    /// The element names in document order.
    static func parse(_ text: String) throws -> [String] {
        #if canImport(FoundationXML) || canImport(Darwin)
            final class Delegate: NSObject, XMLParserDelegate {
                var names: [String] = []
                var error: Error?
                func parser(
                    _ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]
                ) {
                    names.append(name)
                }
                func parser(_ parser: XMLParser, parseErrorOccurred parseError: Error) { error = parseError }
            }
            let parser = XMLParser(data: Data(text.utf8))
            let delegate = Delegate()
            parser.delegate = delegate
            // swift-corelibs-foundation's parse() can return true after an
            // error (a tag left open, a mismatched end tag): check the error too.
            guard parser.parse(), delegate.error == nil, parser.parserError == nil else {
                throw Malformed(
                    description:
                        "XMLParser: \(String(describing: delegate.error ?? parser.parserError)) at line \(parser.lineNumber)"
                )
            }
            return delegate.names
        #else
            return try structural(text)
        #endif
    }

    /// Tags balance, attributes are quoted, no raw `<` or `&` outside markup.
    static func structural(_ text: String) throws -> [String] {
        var stack: [String] = []
        var names: [String] = []
        var rest = Substring(text)
        if rest.hasPrefix("<?xml"), let end = rest.range(of: "?>") { rest = rest[end.upperBound...] }
        while let open = rest.firstIndex(of: "<") {
            let between = rest[..<open]
            if between.contains(">") { throw Malformed(description: "stray '>' in text") }
            guard let close = rest[open...].firstIndex(of: ">") else { throw Malformed(description: "unclosed tag") }
            let tag = rest[rest.index(after: open)..<close]
            if tag.hasPrefix("/") {
                guard stack.popLast() == String(tag.dropFirst()) else {
                    throw Malformed(description: "mismatched </\(tag.dropFirst())>")
                }
            } else {
                let selfClosing = tag.hasSuffix("/")
                let body = selfClosing ? tag.dropLast() : tag
                let name = String(body.prefix { !$0.isWhitespace })
                guard !name.isEmpty else { throw Malformed(description: "empty tag name") }
                if body.filter({ $0 == "\"" }).count % 2 != 0 {
                    throw Malformed(description: "unbalanced quotes in <\(name)>")
                }
                names.append(name)
                if !selfClosing { stack.append(name) }
            }
            rest = rest[rest.index(after: close)...]
        }
        guard stack.isEmpty else { throw Malformed(description: "unclosed <\(stack.last ?? "")>") }
        return names
    }
}
