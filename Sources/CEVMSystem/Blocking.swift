import Foundation

/// Blocking work (hashing a file, fsync, copying clusters) off the Swift
/// cooperative pool and off any event loop: `body` runs on a thread of its
/// own, and the caller's task waits without holding a pool thread.
public enum Blocking {
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread { continuation.resume(with: Result { try body() }) }
            thread.start()
        }
    }
}
