#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Synchronization

/// The guest's serial console, one log per VM that continues across
/// instances. Each line is written as `<UTC timestamp> <text>` with the time
/// the host received its last byte (the guest's own clock stops while it is
/// paused, so only the host can see a pause).
///
/// The log is bounded: once writing a batch of lines would take it past
/// `maximumBytes`, it is rotated first (`console.log` becomes
/// `console.log.1`, replacing the previous one, and a new `console.log`
/// starts), so at most two files of about `maximumBytes` each are kept.
/// `ConsoleLogReader` reads both, in order, and follows a rotation.
public final class ConsoleLog: Sendable {
    public let path: String
    /// The size at which the log is rotated.
    public let maximumBytes: Int64
    /// The default rotation size: 16 MiB (a day of the bundled guest's ticks).
    public static let defaultMaximumBytes: Int64 = 16 << 20

    private struct State {
        var fd: Int32
        var size: Int64
        var partial: [Int: [UInt8]] = [:]
    }

    private let state: Mutex<State>
    private let watches: Mutex<[(needle: [UInt8], signal: AsyncSignal)]>
    /// Host wall-clock times of the most recent complete lines (any instance).
    private let lineTimes = Mutex<[Double]>([])
    static let keptLineTimes = 4096

    /// Longest line kept whole; a longer one is split.
    public static let maximumLine = 64 * 1024

    /// The previous file, kept after a rotation.
    public static func previous(of path: String) -> String { "\(path).1" }

    public init(path: String, maximumBytes: Int64 = ConsoleLog.defaultMaximumBytes) throws {
        self.path = path
        self.maximumBytes = max(1, maximumBytes)
        let fd = try Files.openForAppend(path)
        var st = stat()
        let size = fstat(fd, &st) == 0 ? Int64(st.st_size) : 0
        self.state = Mutex(State(fd: fd, size: size))
        self.watches = Mutex([])
    }

    /// Appends `bytes` (whole lines), rotating first when they would take
    /// the log past `maximumBytes` (never an empty file: a batch larger
    /// than the limit goes into a file of its own).
    private func write(_ bytes: [UInt8], _ state: inout State) {
        if state.size > 0 && state.size + Int64(bytes.count) > maximumBytes {
            rotate(&state)
        }
        do {
            try Files.writeAll(state.fd, bytes, subject: path)
            state.size += Int64(bytes.count)
        } catch {
            // The console must not stop the VM: a full disk loses lines.
        }
    }

    /// console.log → console.log.1, then a new console.log. A reader that
    /// has the old file open reads it to its end, then moves on.
    private func rotate(_ state: inout State) {
        guard Glibc.rename(path, Self.previous(of: path)) == 0, let fd = try? Files.openForAppend(path) else { return }
        close(state.fd)
        state.fd = fd
        state.size = 0
    }

    /// A signal fired when a line containing `text` is logged from now on.
    func signal(whenLineContains text: String) -> AsyncSignal {
        let signal = AsyncSignal()
        watches.withLock { $0.append((Array(text.utf8), signal)) }
        return signal
    }

    private func check(_ line: [UInt8]) {
        let fired = watches.withLock { watches -> [AsyncSignal] in
            guard !watches.isEmpty else { return [] }
            let hits = watches.filter { line.contains(subsequence: $0.needle) }.map(\.signal)
            watches.removeAll { watch in hits.contains { $0 === watch.signal } }
            return hits
        }
        fired.forEach { $0.fire() }
    }

    deinit { state.withLock { _ = close($0.fd) } }

    /// A sink for one instance's console bytes. With `continuing`, the
    /// instance carries on the guest of that one (a live migration's
    /// destination): the line the previous instance left unfinished when it
    /// stopped (its serial port had sent half of it; the rest was in the
    /// migrated UART or the guest's tty buffer) is finished by this
    /// instance's first bytes, not logged as two broken halves.
    public func sink(instance: Int, continuing previous: Int? = nil) -> @Sendable ([UInt8]) -> Void {
        { [self] bytes in self.append(bytes, instance: instance, continuing: previous) }
    }

    func append(_ bytes: [UInt8], instance: Int, continuing previous: Int? = nil) {
        state.withLock { state in
            // The first bytes of a continuing instance take over the line
            // the previous one left unfinished.
            if let previous, state.partial[instance] == nil {
                state.partial[instance] = state.partial.removeValue(forKey: previous) ?? []
            }
            var pending = state.partial[instance] ?? []
            var out: [UInt8] = []
            let now = Timestamp.wallSeconds()
            let stamp = Array(Timestamp.format(seconds: Int(now), microseconds: min(999_999, Int((now - now.rounded(.down)) * 1e6))).utf8) + [0x20]
            for byte in bytes {
                switch byte {
                case 0x0a:
                    out += stamp + pending + [0x0a]
                    check(pending)
                    noteLine(at: now)
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
            state.partial[instance] = pending
            if !out.isEmpty { write(out, &state) }
        }
    }

    private func noteLine(at time: Double) {
        lineTimes.withLock { times in
            times.append(time)
            if times.count > Self.keptLineTimes { times.removeFirst(times.count - Self.keptLineTimes) }
        }
    }

    /// The longest gap between two consecutive console lines whose interval
    /// overlaps `from...to` (wall-clock seconds), in seconds; nil until a
    /// line after `to` was logged. The guest's clock stops while it is
    /// paused, so only these host times show how long it did not run.
    public func longestGap(from: Double, to: Double) -> Double? {
        lineTimes.withLock { times in
            guard let last = times.last, last > to else { return nil }
            var gap: Double = 0
            for (a, b) in zip(times, times.dropFirst()) where b >= from && a <= to {
                gap = max(gap, b - a)
            }
            return gap
        }
    }

    /// Waits (up to `timeout`) for a line after `to`, then returns `longestGap`.
    public func longestGap(from: Double, to: Double, waiting timeout: Duration) async -> Double? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let gap = longestGap(from: from, to: to) { return gap }
            do { try await Task.sleep(for: .milliseconds(20)) } catch { break }
        }
        return longestGap(from: from, to: to)
    }

    /// How long past the resume a pause's host-observed interruption is
    /// looked for: a guest that resumes on a cold instance (TCG translates
    /// its code afresh) may stall again right after it runs.
    public static let interruptionTail = 0.5

    /// The interruption the host saw around a pause from `paused` to
    /// `resumed` (wall-clock seconds): the longest gap between console lines
    /// from the pause to `interruptionTail` after the resume; nil when the
    /// guest printed nothing after that within `timeout`.
    public func interruption(paused: Double, resumed: Double, waiting timeout: Duration = .seconds(3)) async -> Double? {
        await longestGap(from: paused, to: max(resumed, paused) + Self.interruptionTail, waiting: timeout)
    }

    /// Writes out an unfinished last line of `instance` (one whose guest no
    /// instance continues).
    public func finish(instance: Int) {
        state.withLock { state in
            guard let pending = state.partial.removeValue(forKey: instance), !pending.isEmpty else { return }
            write(Array(Timestamp.now().utf8) + [0x20] + pending + [0x0a], &state)
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

extension Array where Element == UInt8 {
    func contains(subsequence needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, needle.count <= count else { return needle.isEmpty }
        for start in 0...(count - needle.count) where self[start] == needle[0] {
            if self[start..<(start + needle.count)].elementsEqual(needle) { return true }
        }
        return false
    }
}
