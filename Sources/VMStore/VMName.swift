/// A VM's name: the key of its directory under `$CEVM_HOME/vms`, so it must
/// never reach outside that directory.
public struct VMName: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let value: String

    public static let maximumLength = 64

    public enum Invalid: Error, Sendable, Equatable, CustomStringConvertible {
        case empty
        case tooLong(String)
        case containsSlash(String)
        case dotDot(String)
        case leadingDot(String)
        case badCharacter(String, Character)

        public var description: String {
            switch self {
            case .empty: return "VM name is empty"
            case .tooLong(let name): return "VM name '\(name)' is longer than \(VMName.maximumLength) characters"
            case .containsSlash(let name): return "VM name '\(name)' contains '/': a name must not be a path"
            case .dotDot(let name): return "VM name '\(name)' contains '..': a name must not reach outside the state directory"
            case .leadingDot(let name): return "VM name '\(name)' starts with '.'"
            case .badCharacter(let name, let c):
                return "VM name '\(name)' contains '\(c)': use letters, digits, '.', '_' and '-'"
            }
        }
    }

    public init(_ text: String) throws(Invalid) {
        if text.isEmpty { throw .empty }
        if text.contains("/") { throw .containsSlash(text) }
        if text.contains("..") { throw .dotDot(text) }
        if text.hasPrefix(".") { throw .leadingDot(text) }
        if text.count > VMName.maximumLength { throw .tooLong(text) }
        for c in text where !(c.isASCII && (c.isLetter || c.isNumber || c == "." || c == "_" || c == "-")) {
            throw .badCharacter(text, c)
        }
        if text.hasPrefix("-") { throw .badCharacter(text, "-") }
        value = text
    }

    public var description: String { value }

    public static func < (lhs: VMName, rhs: VMName) -> Bool { lhs.value < rhs.value }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(value)
    }
}
