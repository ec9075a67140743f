#if canImport(Glibc)
import Glibc
#endif
import CSystemShims

/// A set of CPU numbers, written the way Linux writes them ("0-3,6").
public struct CPUSet: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let cpus: [Int]

    public enum ParseError: Error, Sendable, CustomStringConvertible, Equatable {
        case empty
        case malformed(String)
        case outOfRange(Int)

        public var description: String {
            switch self {
            case .empty: return "empty CPU list"
            case .malformed(let part): return "malformed CPU list element '\(part)' (expected N or N-M, comma-separated)"
            case .outOfRange(let cpu): return "CPU \(cpu) is out of range (0...\(CPUSet.maximumCPU))"
            }
        }
    }

    public static let maximumCPU = 1023

    public init<S: Sequence<Int>>(_ cpus: S) {
        self.cpus = Array(Set(cpus)).sorted()
    }

    /// Parses "0-3,6" (Linux's cpulist format).
    public init(parsing text: String) throws(ParseError) {
        let trimmed = text.trimmingSpaces()
        if trimmed.isEmpty { throw .empty }
        var result: Set<Int> = []
        for part in trimmed.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count),
                let low = Int(bounds[0]), bounds[0].allSatisfy(\.isASCIIDigit),
                let high = bounds.count == 2 ? Int(bounds[1]) : low,
                bounds.last?.allSatisfy(\.isASCIIDigit) == true,
                low <= high
            else { throw .malformed(String(part)) }
            if high > CPUSet.maximumCPU { throw .outOfRange(high) }
            result.formUnion(low...high)
        }
        self.init(result)
    }

    public var isEmpty: Bool { cpus.isEmpty }

    public var description: String {
        var parts: [String] = []
        var index = 0
        while index < cpus.count {
            var end = index
            while end + 1 < cpus.count && cpus[end + 1] == cpus[end] + 1 { end += 1 }
            parts.append(end == index ? "\(cpus[index])" : "\(cpus[index])-\(cpus[end])")
            index = end + 1
        }
        return parts.joined(separator: ",")
    }

    public static func < (lhs: CPUSet, rhs: CPUSet) -> Bool { lhs.cpus.lexicographicallyPrecedes(rhs.cpus) }

    public func isSubset(of other: CPUSet) -> Bool { Set(cpus).isSubset(of: other.cpus) }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(parsing: text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Thread placement with sched_setaffinity(2).
public enum Affinity {
    /// The CPUs this process may run on now (sched_getaffinity(2) of self).
    public static func available() throws -> CPUSet {
        try get(thread: 0)
    }

    /// The calling thread's kernel id (gettid(2)).
    public static func currentThreadID() -> pid_t { cevm_gettid() }

    /// setpriority(2) of one thread (Linux: a thread id is a process id
    /// here): its nice value, -20 ... 19. False when refused (raising the
    /// priority needs CAP_SYS_NICE or RLIMIT_NICE).
    @discardableResult
    public static func setNice(thread tid: pid_t, _ nice: Int32) -> Bool {
        setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), nice) == 0
    }

    /// sched_getaffinity(2) of one thread (0 = the caller).
    public static func get(thread tid: pid_t) throws -> CPUSet {
        var buffer = [Int32](repeating: 0, count: CPUSet.maximumCPU + 1)
        let n = buffer.withUnsafeMutableBufferPointer { cevm_get_affinity(tid, $0.baseAddress, Int32($0.count)) }
        if n < 0 { throw SystemError("sched_getaffinity", errno: errno, subject: "tid \(tid)") }
        return CPUSet(buffer[0..<Int(n)].map(Int.init))
    }

    /// sched_setaffinity(2) of one thread.
    public static func set(thread tid: pid_t, to set: CPUSet) throws {
        let cpus = set.cpus.map(Int32.init)
        let rc = cpus.withUnsafeBufferPointer { cevm_set_affinity(tid, $0.baseAddress, Int32($0.count)) }
        if rc != 0 { throw SystemError("sched_setaffinity", errno: errno, subject: "tid \(tid) to \(set)") }
    }

    /// Thread ids of a process, from /proc/PID/task.
    public static func threads(of pid: pid_t) throws -> [pid_t] {
        try Files.list("/proc/\(pid)/task").compactMap { pid_t($0) }.sorted()
    }

    /// Pins every thread of `pid` to `set`. Threads created later inherit the
    /// mask of the thread that creates them. Repeats the walk until no new
    /// thread shows up, so a thread born during the walk is not missed.
    /// Returns the thread ids pinned.
    @discardableResult
    public static func pin(process pid: pid_t, to set: CPUSet) throws -> [pid_t] {
        var done: Set<pid_t> = []
        for _ in 0..<8 {
            let current = try threads(of: pid)
            let fresh = current.filter { !done.contains($0) }
            if fresh.isEmpty { break }
            for tid in fresh {
                do { try Affinity.set(thread: tid, to: set) } catch let error as SystemError where error.errno == ESRCH {
                    continue  // the thread ended meanwhile
                }
                done.insert(tid)
            }
        }
        return done.sorted()
    }

    /// The name (`/proc/PID/task/TID/comm`) of every thread of `pid`.
    public static func threadNames(of pid: pid_t) throws -> [pid_t: String] {
        var result: [pid_t: String] = [:]
        for tid in try threads(of: pid) {
            guard let name = try? Files.readString("/proc/\(pid)/task/\(tid)/comm") else { continue }
            result[tid] = name.trimmingSpaces()
        }
        return result
    }

    /// Cpus_allowed_list of every thread of `pid`, as the kernel reports it.
    public static func allowedLists(of pid: pid_t) throws -> [pid_t: String] {
        var result: [pid_t: String] = [:]
        for tid in try threads(of: pid) {
            guard let status = try? Files.readString("/proc/\(pid)/task/\(tid)/status") else { continue }
            for line in status.split(separator: "\n") where line.hasPrefix("Cpus_allowed_list:") {
                result[tid] = String(line.dropFirst("Cpus_allowed_list:".count)).trimmingSpaces()
            }
        }
        return result
    }
}

extension StringProtocol {
    public func trimmingSpaces() -> String {
        var slice = Substring(self)
        while let first = slice.first, first.isWhitespace { slice = slice.dropFirst() }
        while let last = slice.last, last.isWhitespace { slice = slice.dropLast() }
        return String(slice)
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}
