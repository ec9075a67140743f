import CEVMSystem
import Foundation
import VMStore

/// How long a restore took inside the supervisor, phase by phase, on the
/// host's monotonic clock (CLOCK_MONOTONIC: the same in every process, so
/// `cevm restore` can measure from its own request to the guest running).
/// The supervisor writes it to `run/restore.json` once the restored guest
/// runs; `cevm restore` reads it back into the VM's `restore-times.jsonl`.
public struct RestoreTiming: Codable, Sendable, Equatable {
    /// The record restored (its id).
    public var record: String
    /// Monotonic seconds: QEMU started and answering QMP (`-incoming defer`).
    public var launched: Double
    /// All of the memory stream sent to QEMU.
    public var streamed: Double
    /// QEMU reported the incoming migration completed.
    public var loaded: Double
    /// `cont` answered: the guest runs.
    public var running: Double

    public init(record: String, launched: Double, streamed: Double, loaded: Double, running: Double) {
        self.record = record
        self.launched = launched
        self.streamed = streamed
        self.loaded = loaded
        self.running = running
    }

    public static func path(_ paths: VMPaths) -> String { "\(paths.runDirectory)/restore.json" }

    /// The timing the supervisor wrote for `record`; nil when there is
    /// none, it names another record, or its times are not in order.
    public static func read(_ paths: VMPaths, record: String) -> RestoreTiming? {
        guard let bytes = try? Files.read(path(paths), limit: 64 << 10),
            let timing = try? JSONDecoder().decode(RestoreTiming.self, from: Data(bytes)), timing.record == record
        else { return nil }
        let times = [timing.launched, timing.streamed, timing.loaded, timing.running]
        guard times.allSatisfy({ $0.isFinite && $0 >= 0 }), times == times.sorted() else { return nil }
        return timing
    }
}
