#if canImport(Glibc)
import Glibc
#endif

/// A failed system call, keeping the call's name, errno and the path or
/// object it was about.
public struct SystemError: Error, Sendable, CustomStringConvertible, Equatable {
    public var call: String
    public var errno: Int32
    public var subject: String?

    public init(_ call: String, errno: Int32, subject: String? = nil) {
        self.call = call
        self.errno = errno
        self.subject = subject
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        if let subject { return "\(call) \(subject): \(reason) (errno \(errno))" }
        return "\(call): \(reason) (errno \(errno))"
    }
}

/// Retries a call that fails with EINTR; throws `SystemError` for -1.
@discardableResult
func retryingEINTR<T: BinaryInteger>(_ call: String, subject: String? = nil, _ body: () -> T) throws -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw SystemError(call, errno: code, subject: subject)
    }
}
