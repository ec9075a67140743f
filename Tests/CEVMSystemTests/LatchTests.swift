import CEVMSystem
import Testing

@Suite struct LatchTests {
    @Test func everyWaiterGetsTheValueSetOnce() async {
        let latch = Latch<Int>()
        async let a = latch.wait()
        async let b = latch.waitIgnoringCancellation()
        #expect(latch.set(7))
        #expect(!latch.set(8), "a second set changes nothing")
        #expect(await a == 7)
        #expect(await b == 7)
        #expect(await latch.wait() == 7, "a wait after the set returns at once")
    }

    /// A waiter whose task is cancelled returns nil at once, and the value
    /// set afterwards reaches no continuation twice (a double resume would trap).
    @Test func aCancelledWaitEndsAtOnce() async {
        let latch = Latch<Int>()
        let waiter = Task { await latch.wait() }
        waiter.cancel()
        #expect(await waiter.value == nil)
        latch.set(1)
        #expect(latch.value == 1)
    }

    /// The first to finish decides; the loser, a wait that would never end
    /// on its own, is cancelled, so the group returns.
    @Test func firstFinishedCancelsTheRest() async {
        let never = Latch<Int>()
        let contenders: [@Sendable () async -> Int] = [
            { await never.wait() ?? -1 },
            { 5 },
        ]
        let result = await firstFinished(contenders)
        #expect(result == 5)
    }
}
