#if canImport(Glibc)
import Glibc
#endif

/// Wall-clock time as UTC ISO 8601 with microseconds ("2026-11-22T20:31:07.123456Z").
public enum Timestamp {
    public static func now() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return format(seconds: Int(ts.tv_sec), microseconds: Int(ts.tv_nsec / 1000))
    }

    /// Wall-clock seconds since the epoch (what `parse` returns for `now()`).
    public static func wallSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec / 1000) / 1e6
    }

    /// `format` of a wall-clock time in seconds since 1970 (as QMP event
    /// stamps and `wallSeconds` give it).
    public static func format(wallSeconds: Double) -> String {
        let whole = wallSeconds.rounded(.down)
        return format(seconds: Int(whole), microseconds: min(999_999, Int(((wallSeconds - whole) * 1_000_000).rounded())))
    }

    public static func format(seconds: Int, microseconds: Int) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))."
            + "\(pad(Int32(microseconds), 6))Z"
    }

    /// Seconds since the epoch, as a Double, of a timestamp made by `format`.
    public static func parse(_ text: some StringProtocol) -> Double? {
        let chars = Array(text.utf8)
        guard chars.count == 27, chars[4] == UInt8(ascii: "-"), chars[10] == UInt8(ascii: "T"),
            chars[19] == UInt8(ascii: "."), chars[26] == UInt8(ascii: "Z")
        else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var value = 0
            for c in chars[range] {
                guard c >= 48 && c <= 57 else { return nil }
                value = value * 10 + Int(c - 48)
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
            let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
            let micro = number(20..<26)
        else { return nil }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        let seconds = timegm(&parts)
        return Double(seconds) + Double(micro) / 1_000_000
    }

    /// CLOCK_MONOTONIC in seconds.
    public static func monotonic() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
