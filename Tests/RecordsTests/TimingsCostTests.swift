import Foundation
import Records
import Testing

@Suite("The manifest's timings.cost: optional and additive")
struct TimingsCostTests {
    @Test("timings written before cost existed decode, with no cost")
    func oldTimingsDecode() throws {
        let json = #"{"requestToPauseMs":1,"guestPauseMs":2,"requestToDurableMs":3,"pausedAt":"a","resumedAt":"b","overlapMs":4}"#
        let timings = try JSONDecoder().decode(RecordManifest.Timings.self, from: Data(json.utf8))
        #expect(timings.cost == nil)
        #expect(timings.overlapMs == 4)
    }

    @Test("a cost round-trips; an unavailable one keeps only its reason")
    func roundTrip() throws {
        var timings = RecordManifest.Timings(requestToPauseMs: 1, guestPauseMs: 2, requestToDurableMs: 3, pausedAt: "a", resumedAt: "b")
        var cost = RecordManifest.Timings.Cost(estimator: "schedstat-run-time", samples: 31)
        cost.rateBefore = 0.98
        cost.lostMs = 312.5
        cost.windowMs = 2900
        cost.threads = 2
        timings.cost = cost
        let data = try JSONEncoder().encode(timings)
        #expect(try JSONDecoder().decode(RecordManifest.Timings.self, from: data) == timings)
        var none = RecordManifest.Timings.Cost(estimator: "schedstat-run-time", samples: 3)
        none.unavailable = "only 0.2 s of vCPU samples before the checkpoint"
        let text = String(decoding: try JSONEncoder().encode(none), as: UTF8.self)
        #expect(!text.contains("lostMs"))
        #expect(text.contains("unavailable"))
    }
}
