import NBDProtocol
import Testing

@testable import NBDServer

/// The connection's window counts WRITE_ZEROES and TRIM by the length they
/// cover, though they carry no payload: zeroing in flight is bounded like
/// payload bytes, and a request larger than the budget runs alone.
@Suite struct RequestWindowTests {
    static let budget = 64 << 20

    @Test func writeZeroesAndTrimCostTheirLength() {
        let gib4 = Int(UInt32.max)
        #expect(RequestWindow.cost(of: .perform(.writeZeroes(offset: 0, length: gib4, fua: false, mayTrim: true))) == gib4)
        #expect(RequestWindow.cost(of: .perform(.trim(offset: 4096, length: 1 << 30, fua: false))) == 1 << 30)
        #expect(RequestWindow.cost(of: .perform(.write(offset: 0, length: 4096, fua: true))) == 4096)
        #expect(RequestWindow.cost(of: .perform(.read(offset: 0, length: 512))) == 512)
        #expect(RequestWindow.cost(of: .perform(.flush)) == 0)
        #expect(RequestWindow.cost(of: .reject(.invalid, "no")) == 0)
    }

    /// Two 48 MiB WRITE_ZEROES do not fit the 64 MiB budget together: the
    /// second waits until the first finished.
    @Test func zeroingBeyondTheBudgetWaits() async {
        let window = RequestWindow(maximumCount: 16, maximumBytes: Self.budget)
        let zeroes = NBDVerdict.perform(.writeZeroes(offset: 0, length: 48 << 20, fua: false, mayTrim: false))
        let first = await window.admit(cost: RequestWindow.cost(of: zeroes), isWrite: true)
        let second = Task { await window.admit(cost: RequestWindow.cost(of: zeroes), isWrite: true) }
        #expect(await eventually { window.isHoldingARequest })
        #expect(window.inFlight == 1)
        window.finish(first)
        let ticket = await second.value
        #expect(window.inFlight == 1 && !window.isHoldingARequest)
        window.finish(ticket)
        #expect(window.inFlight == 0)
    }

    /// A 4 GiB WRITE_ZEROES is admitted into an empty window, alone: even a
    /// 512-byte read waits behind it.
    @Test func aHugeWriteZeroesRunsAlone() async {
        let window = RequestWindow(maximumCount: 16, maximumBytes: Self.budget)
        let huge = NBDVerdict.perform(.writeZeroes(offset: 0, length: Int(UInt32.max), fua: false, mayTrim: true))
        let ticket = await window.admit(cost: RequestWindow.cost(of: huge), isWrite: true)
        let read = Task { await window.admit(cost: RequestWindow.cost(of: .perform(.read(offset: 0, length: 512))), isWrite: false) }
        #expect(await eventually { window.isHoldingARequest })
        window.finish(ticket)
        window.finish(await read.value)
        #expect(window.inFlight == 0)
    }
}
