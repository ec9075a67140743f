import CEVMSystem
import Foundation
import Supervisor
import TestSupport
import Testing

/// The VM's console log across a live migration's switch-over.
@Suite struct ConsoleLogTests {
    func texts(_ path: String) throws -> [String] {
        try Files.readString(path).split(separator: "\n").map { ConsoleLog.parse($0).text }
    }

    /// Old_VM stopped halfway through a line (the rest was in the migrated
    /// UART); New_VM sends the rest: one whole line, not two halves.
    @Test func aLineSplitAtTheSwitchOverIsLoggedWhole() throws {
        let scratch = try Scratch()
        let log = try ConsoleLog(path: scratch.file("console.log"))
        let old = log.sink(instance: 0)
        let new = log.sink(instance: 1, continuing: 0)
        old(Array("cevm-tick counter=24 mem=ok\ncevm-tick count".utf8))
        new(Array("er=25 mem=ok\ncevm-tick counter=26 mem=ok\n".utf8))
        #expect(try texts(scratch.file("console.log")) == [
            "cevm-tick counter=24 mem=ok", "cevm-tick counter=25 mem=ok", "cevm-tick counter=26 mem=ok",
        ])
    }

    /// Without a continuation (a restore starts a new timeline), an
    /// unfinished line stays the old instance's and `finish` writes it.
    @Test func aNewTimelineDoesNotJoinTheOldOnesHalfLine() throws {
        let scratch = try Scratch()
        let log = try ConsoleLog(path: scratch.file("console.log"))
        log.sink(instance: 0)(Array("booting hal".utf8))
        log.sink(instance: 1)(Array("restored\n".utf8))
        log.finish(instance: 0)
        #expect(try texts(scratch.file("console.log")) == ["restored", "booting hal"])
    }
}
