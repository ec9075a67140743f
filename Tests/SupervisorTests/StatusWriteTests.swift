import CEVMSystem
import Foundation
import Synchronization
import TestSupport
import Testing
import VMStore

@testable import Supervisor

/// status.json has one writer at a time and never goes back: many threads
/// updating the status at once leave the newest snapshot in the file, and
/// a reader never sees an older one after a newer one.
@Suite struct StatusWriteTests {
    @Test func concurrentUpdatesNeverMoveTheFileBackwards() async throws {
        let scratch = try Scratch()
        let home = Home(root: scratch.path)
        let name = try VMName("s")
        try Files.makeDirectory(home.vm(name).directory)
        let supervisor = Supervisor(home: home, name: name, options: Supervisor.Options())
        let paths = home.vm(name)
        let writers = 4
        let updatesPerWriter = 50

        // A reader polls the file while the writers run.
        let done = Atomic<Bool>(false)
        let seen = Mutex<[Int]>([])
        let reader = Thread {
            while !done.load(ordering: .acquiring) {
                if let value = paths.readStatus()?.message.flatMap({ Int($0) }) { seen.withLock { $0.append(value) } }
            }
        }
        reader.start()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<writers {
                group.addTask {
                    for _ in 0..<updatesPerWriter {
                        supervisor.update { $0.message = String((Int($0.message ?? "0") ?? 0) + 1) }
                    }
                }
            }
        }
        done.store(true, ordering: .releasing)
        let total = writers * updatesPerWriter
        // The last snapshot taken is the one on disk.
        #expect(paths.readStatus()?.message == String(total))
        let values = seen.withLock { $0 }
        #expect(!values.isEmpty)
        #expect(zip(values, values.dropFirst()).allSatisfy { $0 <= $1 }, "the file went backwards: \(values)")
        // Every temporary name was its own, and none is left.
        #expect(try Files.list(paths.directory) == ["status.json"])
    }
}
