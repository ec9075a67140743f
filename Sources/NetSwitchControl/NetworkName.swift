/// A cevm network's name: the key of its directory under `$CEVM_HOME/nets`,
/// so it must never reach outside that directory. The same rules as a VM's
/// name (letters, digits, '.', '_', '-'; no '/', no '..', no leading '.' or
/// '-'; at most 64 characters); `Kind` names the thing in messages.
public struct NetworkName: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let value: String

    public static let maximumLength = 64

    public enum Invalid: Error, Sendable, Equatable, CustomStringConvertible {
        case empty(kind: String)
        case tooLong(kind: String, String)
        case containsSlash(kind: String, String)
        case dotDot(kind: String, String)
        case leadingDot(kind: String, String)
        case badCharacter(kind: String, String, Character)

        public var description: String {
            switch self {
            case .empty(let kind): return "\(kind) name is empty"
            case .tooLong(let kind, let name): return "\(kind) name '\(name)' is longer than \(NetworkName.maximumLength) characters"
            case .containsSlash(let kind, let name): return "\(kind) name '\(name)' contains '/': a name must not be a path"
            case .dotDot(let kind, let name): return "\(kind) name '\(name)' contains '..': a name must not reach outside the state directory"
            case .leadingDot(let kind, let name): return "\(kind) name '\(name)' starts with '.'"
            case .badCharacter(let kind, let name, let c):
                return "\(kind) name '\(name)' contains '\(c)': use letters, digits, '.', '_' and '-'"
            }
        }
    }

    public init(_ text: String) throws(Invalid) {
        try Self.check(text, kind: "network")
        value = text
    }

    /// Checks a name by the rules above (also used for VM names in control requests).
    public static func check(_ text: String, kind: String) throws(Invalid) {
        if text.isEmpty { throw .empty(kind: kind) }
        if text.contains("/") { throw .containsSlash(kind: kind, text) }
        if text.contains("..") { throw .dotDot(kind: kind, text) }
        if text.hasPrefix(".") { throw .leadingDot(kind: kind, text) }
        if text.count > maximumLength { throw .tooLong(kind: kind, String(text.prefix(maximumLength)) + "…") }
        for c in text where !(c.isASCII && (c.isLetter || c.isNumber || c == "." || c == "_" || c == "-")) {
            throw .badCharacter(kind: kind, text, c)
        }
        if text.hasPrefix("-") { throw .badCharacter(kind: kind, text, "-") }
    }

    public var description: String { value }

    public static func < (lhs: NetworkName, rhs: NetworkName) -> Bool { lhs.value < rhs.value }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(value)
    }
}

/// The files of one network under `$CEVM_HOME`:
///
///     $CEVM_HOME/nets/NET/   0700
///       control.sock         the switch's control socket (0600)
///       lock                 flock held by the running switch
///       pid                  the switch's process id
///       switch.log           the switch's diagnostics
public struct NetPaths: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// `ROOT/nets/NAME` for the state directory `root` (`$CEVM_HOME`).
    public init(root: String, name: NetworkName) { directory = "\(NetPaths.netsDirectory(root: root))/\(name.value)" }

    public static func netsDirectory(root: String) -> String { "\(root)/nets" }

    public var controlSocket: String { "\(directory)/control.sock" }
    public var lock: String { "\(directory)/lock" }
    public var pid: String { "\(directory)/pid" }
    public var log: String { "\(directory)/switch.log" }
}
