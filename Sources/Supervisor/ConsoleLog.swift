#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Synchronization

/// The guest's serial console, one log per VM that continues across
/// instances. Each line is written as `<UTC timestamp> <text>` with the time
/// the host received its last byte (the guest's own clock stops while it is
/// paused, so only the host can see a pause).
public final class ConsoleLog: Sendable {
    public let path: String
    private let fd: Int32
    private let partial: Mutex<[Int: [UInt8]]>

    /// Longest line kept whole; a longer one is split.
    public static let maximumLine = 64 * 1024

    public init(path: String) throws {
        self.path = path
        self.fd = try Files.openForAppend(path)
        self.partial = Mutex([:])
    }

    deinit { close(fd) }

    /// A sink for one instance's console bytes.
    public func sink(instance: Int) -> @Sendable ([UInt8]) -> Void {
        { [self] bytes in self.append(bytes, instance: instance) }
    }

    func append(_ bytes: [UInt8], instance: Int) {
        partial.withLock { partial in
            var pending = partial[instance] ?? []
            var out: [UInt8] = []
            let stamp = Array(Timestamp.now().utf8) + [0x20]
            for byte in bytes {
                switch byte {
                case 0x0a:
                    out += stamp + pending + [0x0a]
                    pending.removeAll(keepingCapacity: true)
                case 0x0d, 0x00:
                    continue
                default:
                    pending.append(byte)
                    if pending.count >= ConsoleLog.maximumLine {
                        out += stamp + pending + [0x0a]
                        pending.removeAll(keepingCapacity: true)
                    }
                }
            }
            partial[instance] = pending
            if !out.isEmpty { try? Files.writeAll(fd, out, subject: path) }
        }
    }

    /// Writes out an unfinished last line of `instance`.
    public func finish(instance: Int) {
        partial.withLock { partial in
            guard let pending = partial.removeValue(forKey: instance), !pending.isEmpty else { return }
            try? Files.writeAll(fd, Array(Timestamp.now().utf8) + [0x20] + pending + [0x0a], subject: path)
        }
    }

    /// A line of the log split into its host timestamp and its text.
    public struct Line: Sendable, Equatable, Codable {
        public var time: String
        public var text: String
    }

    public static func parse(_ line: Substring) -> Line {
        if let space = line.firstIndex(of: " "), Timestamp.parse(line[..<space]) != nil {
            return Line(time: String(line[..<space]), text: String(line[line.index(after: space)...]))
        }
        return Line(time: "", text: String(line))
    }
}
