/// Checks for values that enter cevm from outside: the command line, the
/// control socket and every state file read back. The CLI and the
/// supervisor call the same functions, so a value one refuses the other
/// refuses too, with the same words; a conversion that would trap (`Int` of
/// NaN, of infinity, of an overflowing product) is never reached with an
/// unchecked value.
public enum Validate {
    /// `value` when it is a finite number within `range`.
    @discardableResult
    public static func number(_ value: Double, _ what: String, in range: ClosedRange<Double>, unit: String = "") throws(InvalidValue) -> Double {
        guard value.isFinite else {
            throw InvalidValue(what: what, value: "\(value)", expected: "a finite number" + bounds(range, unit))
        }
        guard range.contains(value) else {
            throw InvalidValue(what: what, value: "\(value)", expected: "a number" + bounds(range, unit))
        }
        return value
    }

    /// A number of seconds within `range`, as a `Duration` (whole microseconds).
    @discardableResult
    public static func duration(seconds value: Double, _ what: String, in range: ClosedRange<Double>) throws(InvalidValue) -> Duration {
        let seconds = try number(value, what, in: range, unit: " s")
        return .microseconds(Int64((seconds * 1_000_000).rounded()))
    }

    /// An integer within `range`.
    @discardableResult
    public static func integer<T: BinaryInteger & Sendable>(_ value: T, _ what: String, in range: ClosedRange<T>) throws(InvalidValue) -> T {
        guard range.contains(value) else {
            throw InvalidValue(what: what, value: "\(value)", expected: "an integer from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    /// An optional integer within `range` when present.
    public static func integer<T: BinaryInteger & Sendable>(_ value: T?, _ what: String, in range: ClosedRange<T>) throws(InvalidValue) {
        if let value { _ = try integer(value, what, in: range) }
    }

    /// An optional number within `range` when present.
    public static func number(_ value: Double?, _ what: String, in range: ClosedRange<Double>, unit: String = "") throws(InvalidValue) {
        if let value { _ = try number(value, what, in: range, unit: unit) }
    }

    /// A process id that names one process (kill(2) of 0 or a negative pid
    /// signals whole groups, of -1 every process it may).
    public static func pid(_ value: Int32?, _ what: String) throws(InvalidValue) {
        try integer(value, what, in: 1...Int32.max)
    }

    private static func bounds(_ range: ClosedRange<Double>, _ unit: String) -> String {
        " from \(format(range.lowerBound))\(unit) to \(format(range.upperBound))\(unit)"
    }

    private static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? "\(Int64(value))" : "\(value)"
    }
}

/// A value refused by `Validate`: what it is (an option, a field of a file),
/// the value as given, and what was expected.
public struct InvalidValue: Error, Sendable, Equatable, CustomStringConvertible {
    public var what: String
    public var value: String
    public var expected: String

    public init(what: String, value: String, expected: String) {
        self.what = what
        self.value = value
        self.expected = expected
    }

    public var description: String { "\(what) \(value) is out of range: expected \(expected)" }

    /// The same refusal, said of a field inside `context` (a file, a message).
    public func within(_ context: String) -> InvalidValue {
        InvalidValue(what: "\(what) in \(context)", value: value, expected: expected)
    }
}

/// A value decoded from outside that can check itself. `StoreCoding.decode`
/// calls `validate` on every state file it reads.
public protocol Validatable {
    func validate() throws(InvalidValue)
}
