/// Number formatting for prose, tables and the plot, without Foundation.
package enum Format {
    /// `x` with exactly `decimals` digits after the point ("0.420", "-3").
    package static func fixed(_ x: Double, _ decimals: Int) -> String {
        guard x.isFinite else { return x.isNaN ? "nan" : (x < 0 ? "-inf" : "inf") }
        let d = max(0, min(decimals, 12))
        var scale: Int64 = 1
        for _ in 0..<d { scale *= 10 }
        let scaled = (Swift.abs(x) * Double(scale)).rounded()
        // Beyond 2^53 the integer path loses exactness: use the exponent form.
        guard scaled < 9.0e15 else { return scientific(x, 4) }
        let units = Int64(scaled)
        let whole = units / scale
        let fraction = units % scale
        var s = (x < 0 && units != 0 ? "-" : "") + String(whole)
        if d > 0 {
            let digits = String(fraction)
            s += "." + String(repeating: "0", count: d - digits.count) + digits
        }
        return s
    }

    /// `x` as "m.mme±k" with `significant` digits ("1.23e-5", "4.0e7").
    package static func scientific(_ x: Double, _ significant: Int) -> String {
        guard x.isFinite else { return fixed(x, 0) }
        guard x != 0 else { return "0" }
        var exponent = Int(Elementary.log10(Swift.abs(x)).rounded(.down))
        var mantissa = x / Elementary.exp10(Double(exponent))
        let digits = max(0, significant - 1)
        let step = Elementary.exp10(Double(digits))
        if Swift.abs((mantissa * step).rounded() / step) >= 10 {
            mantissa /= 10
            exponent += 1
        }
        return fixed(mantissa, digits) + "e" + String(exponent)
    }

    /// `x` to `significant` digits, plain between 1e-4 and 1e9.
    package static func significant(_ x: Double, _ significant: Int = 3) -> String {
        guard x.isFinite else { return fixed(x, 0) }
        guard x != 0 else { return "0" }
        let magnitude = Int(Elementary.log10(Swift.abs(x)).rounded(.down))
        guard magnitude >= -4, magnitude < 9 else { return scientific(x, significant) }
        return fixed(x, max(0, significant - 1 - magnitude))
    }

    /// A duration for prose: "4.20 ms" below 0.1 s, else "0.420 s", "12.3 s", "600 s".
    package static func seconds(_ x: Double) -> String {
        if x != 0, x.isFinite, Swift.abs(x) < 0.1 { return significant(x * 1000) + " ms" }
        return significant(x) + " s"
    }

    /// A signed percentage: "+3.2%", "-0.4%", "+0.03%" (two decimals
    /// below 1%), "0.00%" for what rounds to zero.
    package static func percent(_ x: Double) -> String {
        let text = fixed(x, Swift.abs(x) < 1 ? 2 : 1)
        let zero = text.allSatisfy { $0 == "0" || $0 == "." || $0 == "-" }
        if zero { return text.filter { $0 != "-" } + "%" }
        return (x > 0 ? "+" : "") + text + "%"
    }

    /// An unsigned percentage: two decimals below 1%, one above.
    package static func magnitudePercent(_ x: Double) -> String {
        fixed(x, Swift.abs(x) < 1 ? 2 : 1) + "%"
    }

    /// Seconds in a table column: three decimals.
    package static func column(_ x: Double?) -> String {
        guard let x else { return "-" }
        return fixed(x, 3)
    }

    /// A list of counts: "1, 5, 10".
    package static func list(_ values: [Int]) -> String {
        values.map(String.init).joined(separator: ", ")
    }
}
