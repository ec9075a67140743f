/// A group checkpoint's channel state on one network: the frames in flight
/// across the cut, each with its sender and receiver, in the order the
/// switch wrote them. Kept as `channel-NET.bin` in the group record:
///
///     offset  size  field
///     0       8     magic "CEVMCHAN"
///     8       4     version (1), big-endian
///     12      4     frame count, big-endian
///     16      …     per frame: from length (1), from, to length (1), to,
///                   frame length (4, big-endian), frame
///
/// Names follow the VM-name rules; a frame is 14 to 65536 bytes. Anything
/// else — a short file, trailing bytes, a bad name or length — is refused
/// with what is wrong and where.
public struct ChannelState: Sendable, Equatable {
    public struct Frame: Sendable, Equatable {
        public var from: String
        public var to: String
        public var bytes: [UInt8]

        public init(from: String, to: String, bytes: [UInt8]) {
            self.from = from
            self.to = to
            self.bytes = bytes
        }
    }

    public static let magic = Array("CEVMCHAN".utf8)
    public static let version: UInt32 = 1
    public static let minimumFrameBytes = 14
    public static let maximumFrameBytes = 65536

    public var frames: [Frame]

    public init(frames: [Frame] = []) { self.frames = frames }

    public struct Invalid: Error, Sendable, Equatable, CustomStringConvertible {
        public let offset: Int
        public let problem: String
        public var description: String { "channel state: \(problem) at byte \(offset)" }
    }

    /// The frames for one receiver, in order.
    public func frames(to vm: String) -> [[UInt8]] { frames.filter { $0.to == vm }.map(\.bytes) }

    public func encoded() -> [UInt8] {
        var out = Self.magic
        Self.put32(&out, Self.version)
        Self.put32(&out, UInt32(frames.count))
        for frame in frames {
            out.append(UInt8(frame.from.utf8.count))
            out += Array(frame.from.utf8)
            out.append(UInt8(frame.to.utf8.count))
            out += Array(frame.to.utf8)
            Self.put32(&out, UInt32(frame.bytes.count))
            out += frame.bytes
        }
        return out
    }

    public init(decoding bytes: [UInt8]) throws(Invalid) {
        var at = 0
        func take(_ n: Int, _ what: String) throws(Invalid) -> ArraySlice<UInt8> {
            guard n >= 0, bytes.count - at >= n else { throw Invalid(offset: at, problem: "the file ends inside \(what)") }
            defer { at += n }
            return bytes[at..<(at + n)]
        }
        func u32(_ what: String) throws(Invalid) -> UInt32 {
            try take(4, what).reduce(0) { $0 << 8 | UInt32($1) }
        }
        func name(_ what: String) throws(Invalid) -> String {
            let start = at
            let length = Int(try take(1, "\(what)'s length").first ?? 0)
            let text = String(decoding: try take(length, what), as: UTF8.self)
            do { try NetworkName.check(text, kind: "VM") } catch { throw Invalid(offset: start, problem: "\(what): \(error)") }
            return text
        }
        guard Array(try take(8, "the magic")) == Self.magic else { throw Invalid(offset: 0, problem: "not a channel-state file (no CEVMCHAN magic)") }
        let version = try u32("the version")
        guard version == Self.version else { throw Invalid(offset: 8, problem: "version \(version) (this cevm reads \(Self.version))") }
        let count = try u32("the frame count")
        // Each frame takes at least 1 + 1 + 1 + 1 + 4 + 14 bytes: a count the
        // file cannot hold is refused before anything is reserved for it.
        guard Int(count) <= (bytes.count - at) / 22 else {
            throw Invalid(offset: 12, problem: "\(count) frames announced, more than the file's \(bytes.count) bytes can hold")
        }
        var frames: [Frame] = []
        frames.reserveCapacity(Int(count))
        for index in 0..<Int(count) {
            let from = try name("frame \(index)'s sender")
            let to = try name("frame \(index)'s receiver")
            let lengthAt = at
            let length = Int(try u32("frame \(index)'s length"))
            guard (Self.minimumFrameBytes...Self.maximumFrameBytes).contains(length) else {
                throw Invalid(offset: lengthAt, problem: "frame \(index) is \(length) bytes (a frame is \(Self.minimumFrameBytes) to \(Self.maximumFrameBytes))")
            }
            frames.append(Frame(from: from, to: to, bytes: Array(try take(length, "frame \(index)"))))
        }
        guard at == bytes.count else { throw Invalid(offset: at, problem: "\(bytes.count - at) bytes after the last frame") }
        self.frames = frames
    }

    private static func put32(_ out: inout [UInt8], _ value: UInt32) {
        out += [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)]
    }
}
