#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Synchronization
import Testing
import VMStore

@testable import Supervisor

/// The sampler against the real /proc: a thread of this process stands in
/// for a vCPU, spinning, then "paused" (asleep) for part of the window.
@Suite(.serialized) struct VCPUSamplerTests {
    /// A thread that spins except while `sleeping` is set; its tid once known.
    final class Spinner: Sendable {
        let tid = Mutex<Int32>(0)
        let sleeping = Atomic<Bool>(false)
        let done = Atomic<Bool>(false)

        /// gettid(2), from /proc/thread-self ("PID/task/TID").
        static func currentThreadID() -> Int32 {
            let link = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self")) ?? ""
            return link.split(separator: "/").last.flatMap { Int32($0) } ?? -1
        }

        func start() -> Int32 {
            let thread = Thread { [self] in
                tid.withLock { $0 = Self.currentThreadID() }
                var x: UInt64 = 0
                while !done.load(ordering: .relaxed) {
                    if sleeping.load(ordering: .relaxed) {
                        usleep(5000)
                    } else {
                        for i in 0..<10_000 { x = x &+ UInt64(i) &* 31 }
                    }
                }
                withExtendedLifetime(x) {}
            }
            thread.start()
            while tid.withLock({ $0 }) == 0 { usleep(1000) }
            return tid.withLock { $0 }
        }
    }

    @Test func aPauseInTheWindowIsChargedAndAnIdleThreadIsNot() async throws {
        let spinner = Spinner()
        let tid = spinner.start()
        defer { spinner.done.store(true, ordering: .relaxed) }
        let sampler = VCPUSampler()
        defer { sampler.stop() }
        sampler.track(pid: getpid(), threads: [tid])
        // 2.2 s of baseline (the ring), then a window with 0.6 s asleep in it.
        try await Task.sleep(for: .milliseconds(2200))
        let opened = sampler.openWindow()
        try await Task.sleep(for: .milliseconds(300))
        spinner.sleeping.store(true, ordering: .relaxed)
        let asleepFrom = Timestamp.monotonic()
        try await Task.sleep(for: .milliseconds(600))
        spinner.sleeping.store(false, ordering: .relaxed)
        let resumed = Timestamp.monotonic()
        let asleep = (resumed - asleepFrom) * 1000
        let cost = try #require(await sampler.closeWindow(resumed: resumed))
        #expect(cost.unavailable == nil, "\(cost)")
        let lost = try #require(cost.lostMs), window = try #require(cost.windowMs)
        // The window: from the open sweep to at least 0.2 s (the settle) after the "resume".
        #expect(window >= (resumed + VCPUSampler.settle - opened) * 1000 - 1, "\(cost)")
        #expect(lost <= window, "\(cost)")
        // Most of the time asleep is charged when the thread had a CPU to itself
        // before; a thread sharing one (other suites, other work) may get a larger
        // share after the "pause" than before it, which the estimate counts as gain.
        if (cost.rateBefore ?? 0) > 0.8 { #expect(lost > 0.5 * asleep, "\(asleep) ms asleep: \(cost)") }
        #expect((cost.samples) >= 20, "periodic sweeps every 100 ms: \(cost)")
        #expect(cost.threads == 1)
        #expect(await sampler.closeWindow(resumed: nil) == nil, "no window open")

        // Asleep throughout: no rate before, no estimate, a reason.
        spinner.sleeping.store(true, ordering: .relaxed)
        try await Task.sleep(for: .milliseconds(2200))
        _ = sampler.openWindow()
        try await Task.sleep(for: .milliseconds(300))
        let idle = try #require(await sampler.closeWindow(resumed: nil))
        #expect(idle.lostMs == nil && (idle.unavailable ?? "").contains("idle"), "\(idle)")
    }
}

/// The supervisor's restore phases, read back by `cevm restore`.
@Suite struct RestoreTimingTests {
    @Test func readsItsOwnRecordsTimingOnlyAndOnlyInOrder() throws {
        let root = "/tmp/cevm-restore-timing-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let paths = Home(root: root).vm(try VMName("r"))
        try Files.makeDirectory(paths.runDirectory, mode: 0o700)
        func write(_ timing: RestoreTiming) throws {
            try Files.writeAtomically(Array(try JSONEncoder().encode(timing)), to: RestoreTiming.path(paths))
        }
        let good = RestoreTiming(record: "a", launched: 10, streamed: 12.5, loaded: 12.6, running: 12.61)
        try write(good)
        #expect(RestoreTiming.read(paths, record: "a") == good)
        #expect(RestoreTiming.read(paths, record: "b") == nil, "another record's timing")
        try write(RestoreTiming(record: "a", launched: 10, streamed: 9, loaded: 12.6, running: 12.61))
        #expect(RestoreTiming.read(paths, record: "a") == nil, "phases out of order")
        try write(RestoreTiming(record: "a", launched: -1, streamed: 9, loaded: 12.6, running: 13))
        #expect(RestoreTiming.read(paths, record: "a") == nil)
        try Files.writeAtomically(Array("not json".utf8), to: RestoreTiming.path(paths))
        #expect(RestoreTiming.read(paths, record: "a") == nil)
    }
}
