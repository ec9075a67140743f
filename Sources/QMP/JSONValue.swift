#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A JSON value as QMP carries it.
///
/// Integers are kept exactly in ``int(_:)`` (QEMU reports byte counts and
/// offsets that do not fit a `Double`); numbers with a fraction or exponent,
/// and integers outside the `Int64` range, become ``double(_:)``. Equality is
/// structural: `.int(1)` and `.double(1)` are different values, but
/// ``intValue`` and ``doubleValue`` read either.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])
}

// MARK: - Accessors

extension JSONValue {
    /// `value["key"]`: the member of an object, `nil` for a missing key or a non-object.
    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    /// `value[0]`: the element of an array, `nil` when out of range or not an array.
    public subscript(index: Int) -> JSONValue? {
        if case .array(let elements) = self, elements.indices.contains(index) { return elements[index] }
        return nil
    }

    public var isNull: Bool { self == .null }

    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The number as `Int64` if it is an integer (or a `Double` with an exact integer value).
    public var int64Value: Int64? {
        switch self {
        case .int(let value): return value
        case .double(let value): return Int64(exactly: value)
        default: return nil
        }
    }

    /// The number as `Int` if it is an integer that fits.
    public var intValue: Int? { self.int64Value.flatMap { Int(exactly: $0) } }

    /// Any number as `Double` (large integers may lose precision).
    public var doubleValue: Double? {
        switch self {
        case .int(let value): return Double(value)
        case .double(let value): return value
        default: return nil
        }
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    public var objectValue: [String: JSONValue]? {
        if case .object(let value) = self { return value }
        return nil
    }
}

// MARK: - Codable

extension JSONValue: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .int(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}

// MARK: - Conversions

extension JSONValue {
    /// Parses one JSON text (strict RFC 8259; integers that fit `Int64` stay exact).
    public init(parsing bytes: some Sequence<UInt8>) throws {
        self = try JSONParser.parse(Array(bytes))
    }

    /// Compact JSON, keys sorted. Throws for non-finite doubles, which JSON cannot carry.
    public func serialized() throws -> [UInt8] {
        var output: [UInt8] = []
        try JSONSerializer.serialize(self, into: &output)
        return output
    }

    /// Converts any `Encodable` value by encoding it with `JSONEncoder` and parsing the result.
    public init(encoding value: some Encodable) throws {
        self = try JSONValue(parsing: try JSONEncoder().encode(value))
    }

    /// Decodes this value as `T` with `JSONDecoder` (for example a `Decodable` struct mirroring a QMP reply).
    public func decode<T: Decodable>(as type: T.Type = T.self) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(try self.serialized()))
    }
}

extension JSONValue: CustomStringConvertible {
    /// Compact JSON with sorted keys.
    public var description: String {
        var output: [UInt8] = []
        do {
            try JSONSerializer.serialize(self, into: &output)
        } catch {
            return "<\(error)>"
        }
        return String(decoding: output, as: UTF8.self)
    }
}

// MARK: - Literals

extension JSONValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral
{
    public init(nilLiteral: ()) { self = .null }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}
