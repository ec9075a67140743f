// The C library's elementary functions, wrapped so that no other file of the
// module needs a platform import. No Foundation: the module has no
// dependencies.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// e^x, e^x − 1 (exact for small x), log₁₀ x, 10^x.
package enum Elementary {
    package static func exp(_ x: Double) -> Double { cExp(x) }
    package static func expm1(_ x: Double) -> Double { cExpm1(x) }
    package static func log10(_ x: Double) -> Double { cLog10(x) }
    package static func exp10(_ x: Double) -> Double { cPow(10, x) }
    /// ln(1 + x), exact for small x.
    package static func log1p(_ x: Double) -> Double { cLog1p(x) }
}

private func cExp(_ x: Double) -> Double { exp(x) }
private func cExpm1(_ x: Double) -> Double { expm1(x) }
private func cLog10(_ x: Double) -> Double { log10(x) }
private func cLog1p(_ x: Double) -> Double { log1p(x) }
private func cPow(_ x: Double, _ y: Double) -> Double { pow(x, y) }
