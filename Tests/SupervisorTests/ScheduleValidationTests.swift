import Control
import CEVMSystem
import Foundation
import Synchronization
import TestSupport
import Records
import Testing
import VMStore

@testable import Supervisor

/// Control requests and stored schedules are checked by the supervisor
/// before it acts on them; failed scheduled checkpoints back off.
@Suite struct ScheduleValidationTests {
    func schedule(every: Double? = nil, mtbf: Double? = nil, keep: Int? = nil) -> ScheduleOptions {
        ScheduleOptions(everySeconds: every, mtbfSeconds: mtbf, checkpoint: CheckpointOptions(mechanism: .cevm), keep: keep)
    }

    @Test(arguments: [Double.nan, .infinity, -1, 0, 0.5, 1e300])
    func badIntervalsAreRefused(seconds: Double) {
        #expect(throws: InvalidValue.self) { try schedule(every: seconds).validate() }
        #expect(throws: InvalidValue.self) { try schedule(mtbf: seconds).validate() }
    }

    @Test func aScheduleNeedsExactlyOneOfIntervalAndMTBFAndAPositiveKeep() throws {
        try schedule(every: 2).validate()
        try schedule(mtbf: 3600, keep: 3).validate()
        #expect(throws: InvalidValue.self) { try schedule().validate() }
        #expect(throws: InvalidValue.self) { try schedule(every: 60, mtbf: 3600).validate() }
        #expect(throws: InvalidValue.self) { try schedule(every: 60, keep: 0).validate() }
        #expect(throws: InvalidValue.self) { try schedule(every: 60, keep: -3).validate() }
    }

    /// Formatting an interval never traps, whatever a status holds.
    @Test func durationsFormatAnyNumber() {
        #expect(ScheduleOptions.duration(7200) == "2 h")
        #expect(ScheduleOptions.duration(2) == "2.0 s")
        #expect(ScheduleOptions.duration(.infinity) == "inf s")
        #expect(ScheduleOptions.duration(.nan) == "nan s")
        #expect(ScheduleOptions.duration(1e300) == "1e+300 s")
    }

    @Test func checkpointNumbersAreBounded() throws {
        try CheckpointOptions(mechanism: .cevm, downtimeLimitMs: 300, maxStreamBytes: 1 << 20).validate()
        for options in [
            CheckpointOptions(mechanism: .cevm, downtimeLimitMs: 0), CheckpointOptions(mechanism: .cevm, downtimeLimitMs: -5),
            CheckpointOptions(mechanism: .cevm, downtimeLimitMs: .max), CheckpointOptions(mechanism: .cevm, maxStreamBytes: 0),
            CheckpointOptions(mechanism: .cevm, maxStreamBytes: -1),
        ] {
            #expect(throws: InvalidValue.self) { try options.validate() }
        }
    }

    /// What arrives on the control socket is decoded and then validated: a
    /// negative interval never reaches the scheduler.
    @Test func controlMessagesAreValidatedOnArrival() throws {
        func decode(_ json: String) throws -> ControlMessage {
            try JSONDecoder().decode(ControlMessage.self, from: Data(json.utf8))
        }
        let good = try decode(#"{"op":"schedule","schedule":{"everySeconds":60,"checkpoint":{"mechanism":"cevm"}}}"#)
        #expect(try good.validatedRequest() != nil)
        for json in [
            #"{"op":"schedule","schedule":{"everySeconds":-60,"checkpoint":{"mechanism":"cevm"}}}"#,
            #"{"op":"schedule","schedule":{"everySeconds":1e300,"checkpoint":{"mechanism":"cevm"}}}"#,
            #"{"op":"schedule","schedule":{"mtbfSeconds":0,"checkpoint":{"mechanism":"cevm"}}}"#,
            #"{"op":"checkpoint","checkpoint":{"mechanism":"cevm","downtimeLimitMs":-1}}"#,
            #"{"op":"checkpoint","checkpoint":{"mechanism":"cevm","maxStreamBytes":0}}"#,
        ] {
            #expect(throws: InvalidValue.self, "\(json)") { try decode(json).validatedRequest() }
        }
        #expect(try decode(#"{"op":"status"}"#).validatedRequest() != nil)
        #expect(try decode(#"{"op":"nonsense"}"#).validatedRequest() == nil)
    }

    /// A schedule.json written with a bad value (by hand, or by an older
    /// cevm) is refused when read back, not turned into a sleep that traps.
    @Test func aBadStoredScheduleIsRefusedWhenRead() throws {
        let scratch = try Scratch()
        let path = scratch.file("schedule.json")
        try Files.writeAtomically(Array(#"{"everySeconds":-1,"checkpoint":{"mechanism":"cevm"}}"#.utf8), to: path)
        #expect(throws: StoreError.self) { try StoreCoding.decode(ScheduleOptions.self, from: path) }
        try StoreCoding.write(schedule(every: 30), to: path)
        #expect(try StoreCoding.decode(ScheduleOptions.self, from: path) == schedule(every: 30))
    }

    @Test func backoffDoublesPerFailureUpToTheCapAndResetsOnSuccess() {
        var backoff = ScheduleBackoff()
        #expect(backoff.delay(interval: 10) == 10)
        var delays: [Double] = []
        for _ in 0..<12 {
            backoff.failed()
            delays.append(backoff.delay(interval: 10))
        }
        #expect(delays == [20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600, 3600])
        backoff.succeeded()
        #expect(backoff.delay(interval: 10) == 10)
        // An interval longer than the cap is never shortened by it; nothing
        // is ever shorter than the shortest interval, nor NaN.
        backoff.failed()
        #expect(backoff.delay(interval: 7200) == 7200)
        #expect(ScheduleBackoff().delay(interval: 0) == ScheduleOptions.intervalRange.lowerBound)
        #expect(ScheduleBackoff().delay(interval: .nan) == ScheduleOptions.intervalRange.lowerBound)
        for _ in 0..<100 { backoff.failed() }
        #expect(backoff.delay(interval: 10) == ScheduleBackoff.cap)
    }

    /// A fake clock: the loop's sleeps are recorded, not slept.
    final class FakeClock: Sendable {
        let sleeps = Mutex<[Double]>([])
        let outcomes: Mutex<[ScheduleLoop.Outcome]>
        let measured: Mutex<Bool>

        init(outcomes: [ScheduleLoop.Outcome], measured: Bool = true) {
            self.outcomes = Mutex(outcomes)
            self.measured = Mutex(measured)
        }

        func loop(interval seconds: Double) -> ScheduleLoop {
            ScheduleLoop(
                interval: { [self] in .init(seconds: seconds, reason: "test", measured: measured.withLock { $0 }) },
                sleep: { [self] seconds in
                    // Ends the loop once every scripted attempt has been made.
                    let more = outcomes.withLock { !$0.isEmpty }
                    sleeps.withLock { $0.append(seconds) }
                    if !more { throw CancellationError() }
                },
                attempt: { [self] in outcomes.withLock { $0.removeFirst() } },
                publish: { _, _, _ in })
        }
    }

    @Test func theLoopBacksOffAfterFailedCheckpoints() async {
        let clock = FakeClock(outcomes: [.succeeded, .failed, .failed, .failed, .succeeded, .skipped, .failed])
        await clock.loop(interval: 2).run()
        #expect(clock.sleeps.withLock { $0 } == [2, 2, 4, 8, 16, 2, 2, 4])
    }

    /// With an MTBF and nothing measured, checkpoints that leave nothing to
    /// measure back off like failures: never a hot loop.
    @Test func anUnmeasuredScheduleNeverSpinsAtZero() async {
        let clock = FakeClock(outcomes: [.succeeded, .succeeded, .succeeded], measured: false)
        await clock.loop(interval: ScheduleLoop.measuringDelay).run()
        let sleeps = clock.sleeps.withLock { $0 }
        #expect(sleeps == [5, 10, 20, 40])
        #expect(sleeps.allSatisfy { $0 >= ScheduleOptions.intervalRange.lowerBound })
    }

    /// A merge journal read back names a record (a plain id, its own
    /// directory) or is refused with the file named.
    @Test(arguments: [#"{"parent":"../../etc","parentDirectory":"/etc"}"#, #"{"parent":"20261101-000000-aaaa","parentDirectory":"/tmp/x"}"#, "not json"])
    func aBadMergeJournalIsRefused(journal: String) async throws {
        let scratch = try Scratch()
        let store = RecordStore(directory: scratch.file("records"))
        try Files.makeDirectory("\(store.directory)/child")
        try Files.writeAtomically(Array(journal.utf8), to: "\(store.directory)/child/merge.json")
        let error = await #expect(throws: RecordError.self) { try await Retention.recover(store: store) }
        #expect(error.map { "\($0)".contains("merge.json") } == true, "\(String(describing: error))")
    }
}
