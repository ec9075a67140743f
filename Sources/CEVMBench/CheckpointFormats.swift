#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import QEMU
import Records
import Supervisor
import VMStore

/// Record format 2 against format 1 (`cevm bench checkpoint --formats 1,2`):
/// per mechanism and RAM size, with each format, a first checkpoint (full)
/// and a second one `gap` seconds later (incremental in format 2), each with
/// its memory's size, time to durable, the supervisor's CPU time and the
/// guest's progress; then restores of one RAM size's records, against QEMU
/// alone loading the raw stream from a file.
extension CheckpointBenchRunner {
    // MARK: Old-side CPU time

    /// The supervisor of `guest` (status.json's `supervisorPID`).
    func supervisorPID(_ guest: String) -> Int32? {
        guard let name = try? VMName(guest) else { return nil }
        return Home(root: home).vm(name).readStatus()?.supervisorPID
    }

    /// utime + stime of `pid` in seconds (/proc/PID/stat fields 14 and 15):
    /// every thread of the process, not its children (QEMU is a child).
    static func cpuSeconds(pid: Int32) -> Double? {
        guard let text = try? Files.readString("/proc/\(pid)/stat", limit: 4096), let close = text.lastIndex(of: ")") else {
            return nil
        }
        // After "pid (comm)": field 3 (state) is index 0, so utime (14) is index 11.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        let hertz = sysconf(Int32(_SC_CLK_TCK))
        return (user + system) / Double(hertz > 0 ? hertz : 100)
    }

    // MARK: Write bandwidth

    static func writeBandwidth(directory: String, bytes: Int64) throws -> Double {
        try WriteBandwidth.measure(directory: directory, bytes: bytes)
    }

    // MARK: The guest's own count of written pages

    /// The pages the job wrote in units `from + 1 ... to`, replayed from
    /// scripts/guest/workload.c: unit c rewrites page `pick_page(c, j)` of
    /// its working set for j < pages, and bumps that page's 32-bit version
    /// in the version array. Distinct working-set pages plus distinct
    /// version-array pages; nil for an empty or absurd range.
    func pagesWritten(from: Int, to: Int, workingSetMiB: Int) -> Int? {
        guard from >= 0, to > from, to - from <= 50_000_000 else { return nil }
        let count = UInt64(workingSetMiB) * 256
        guard count > 0 else { return nil }
        var written = [Bool](repeating: false, count: Int(count))
        var versions = [Bool](repeating: false, count: Int((count * 4 + 4095) / 4096))
        var distinct = 0, versionPages = 0
        for unit in (from + 1)...to {
            for j in 0..<pages {
                let page = Int(Self.pickPage(unit: UInt64(unit), index: UInt64(j), count: count))
                if !written[page] {
                    written[page] = true
                    distinct += 1
                }
                let versionPage = page * 4 / 4096
                if !versions[versionPage] {
                    versions[versionPage] = true
                    versionPages += 1
                }
            }
        }
        return distinct + versionPages
    }

    static func mix64(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    static func pickPage(unit: UInt64, index: UInt64, count: UInt64) -> UInt64 {
        mix64(unit &* 0xa076_1d64_78bd_642f ^ mix64(index &+ 0xe703_7ed1_a0b4_28db)) % count
    }

    // MARK: Restores

    /// Restores of the records measured at `restoreMiB` of RAM: each
    /// mechanism's last format 1 record, format 2 full (first) and
    /// incremental (second) record, with `cevm restore --name` (timed from
    /// the command to its return: the record verified, QEMU started, the
    /// memory loaded, the guest running); and QEMU alone loading the format 1
    /// record's raw stream from its file (`-incoming defer`, then
    /// `migrate-incoming file:…`, timed from the command to `completed`).
    func measureRestores(_ rows: [CheckpointBenchReport.Row]) async throws -> [CheckpointBenchReport.RestoreRow] {
        guard let mib = restoreMiB else { return [] }
        var out: [CheckpointBenchReport.RestoreRow] = []
        var index = 0
        for mechanism in mechanisms {
            let group = rows.filter { $0.memoryMiB == mib && $0.mechanism == mechanism.rawValue && !$0.guestLost && !$0.record.isEmpty }
            let cases: [(String, CheckpointBenchReport.Row?)] = [
                ("format 1", group.last { $0.recordFormat == 1 && $0.checkpoint == "first" }),
                ("format 2 full", group.last { $0.recordFormat == 2 && $0.checkpoint == "first" }),
                ("format 2 incremental", group.last { $0.recordFormat == 2 && $0.checkpoint == "second" }),
            ]
            for (label, row) in cases {
                guard let row else { continue }
                try checkStop()
                index += 1
                let name = "restore\(index)"
                BenchOutput.progress("\(mib) MiB: restoring \(mechanism.rawValue) \(label)…")
                started.withLock { $0.append(name) }
                let start = Timestamp.monotonic()
                let result = try await cevm(["restore", row.record, "--name", name], timeout: .seconds(600))
                let seconds = Timestamp.monotonic() - start
                out.append(.init(
                    memoryMiB: mib, mechanism: mechanism.rawValue, what: "cevm restore, \(label)", record: row.record,
                    recordMemoryBytes: row.memoryBytes ?? 0, seconds: result.status.succeeded ? seconds : nil,
                    failure: result.status.succeeded ? nil : "\(result.status): \(result.stderr)"))
                _ = try? await cevm(["stop", name], timeout: .seconds(120))
                started.withLock { $0.removeAll { $0 == name } }
            }
            if let row = cases[0].1 {
                try checkStop()
                BenchOutput.progress("\(mib) MiB: QEMU alone loading \(mechanism.rawValue)'s stream from its file…")
                index += 1
                var restore = CheckpointBenchReport.RestoreRow(
                    memoryMiB: mib, mechanism: mechanism.rawValue, what: "QEMU alone, migrate-incoming file:", record: row.record,
                    recordMemoryBytes: row.memoryBytes ?? 0, seconds: nil, failure: nil)
                do { restore.seconds = try await loadStreamAlone(record: row.record, index: index) } catch {
                    restore.failure = "\(error)"
                }
                out.append(restore)
            }
        }
        return out
    }

    /// QEMU alone, configured as the record's VM, loading the record's raw
    /// stream (format 1) from its file; seconds from `migrate-incoming` to
    /// the `completed` state.
    func loadStreamAlone(record directory: String, index: Int) async throws -> Double {
        let record = try Record.load(directory: directory)
        let spec = record.manifest.spec
        guard let stream = record.manifest.file(.memory)?.name, record.manifest.memory == nil else {
            throw BenchError("\(directory) is not a format 1 record")
        }
        guard case .kernel(let kernel, let initrd, let append) = spec.boot else {
            throw BenchError("\(directory): the VM does not boot a kernel directly")
        }
        let work = "\(home)/alone\(index)"
        try Files.makeDirectory(work, mode: 0o700)
        let cpuModel = spec.cpuModel.map { $0 == VMSpec.automaticCPUModel ? QEMUCommandLine.defaultCPUModel(for: .tcg) : $0 }
        let config = InstanceConfig(
            name: "alone\(index)", memoryMiB: spec.memoryMiB, vcpus: spec.vcpus, machine: spec.machine, accel: .tcg,
            boot: .kernel(kernel: kernel, initrd: initrd, append: append), drive: nil, qmpSocket: "\(work)/qmp.sock", incoming: true,
            cpuModel: cpuModel, ramPaddingKiB: spec.ramPaddingKiB ?? 0)
        let console = try ConsoleLog(path: "\(work)/console.log")
        let instance = try await QEMUInstance.launch(config, stderrLog: "\(work)/qemu.stderr", cpuset: nil, console: console.sink(instance: 0))
        bare.withLock { $0.append(instance) }
        defer { bare.withLock { $0.removeAll { $0 === instance } } }
        do {
            let watch = try await MigrationWatch.start(instance.qmp)
            let start = Timestamp.monotonic()
            _ = try await instance.qmp.execute("migrate-incoming", arguments: ["uri": .string("file:\(directory)/\(stream)")])
            try await watch.end(timeout: .seconds(300))
            let seconds = Timestamp.monotonic() - start
            await instance.stop(grace: .seconds(2))
            return seconds
        } catch {
            await instance.stop(grace: .seconds(2))
            throw error
        }
    }
}
