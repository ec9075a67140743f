#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Testing

/// `cevm disk info | create-overlay | verify` and `cevm inspect` with the real
/// binary, on a record of the bundled guest.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct DiskCommandTests {
    func json(_ result: CEVMHarness.Result) throws -> [String: Any] {
        guard result.ok, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
            throw HarnessError("command failed (\(result.status)): \(result.stderr)")
        }
        return object
    }

    /// One record of a running bundled guest, taken after `ticks` ticks; the VM is stopped.
    func record(_ cevm: borrowing CEVMHarness, _ name: String) throws -> (id: String, directory: String, lastTick: Int) {
        #expect(try cevm.run(["run", name, "--accel", "tcg"]).ok)
        _ = try cevm.waitForTicks(name, count: 6)
        let taken = try json(try cevm.run(["checkpoint", name, "--mechanism", "stop-and-save", "--json"]))
        let manifest = taken["manifest"] as? [String: Any]
        guard let id = manifest?["id"] as? String, let directory = taken["directory"] as? String else {
            throw HarnessError("checkpoint printed no id")
        }
        let resumedAt = Timestamp.parse((manifest?["timings"] as? [String: Any])?["resumedAt"] as? String ?? "") ?? 0
        let ticks = try cevm.waitForTicks(name, count: 10)
        #expect(try cevm.run(["stop", name]).ok)
        let last = ticks.filter { (Timestamp.parse($0.time) ?? .infinity) < resumedAt }.map(\.counter).max() ?? 0
        return (id, directory, last)
    }

    @Test func diskInfoCreateOverlayAndVerifyOnARecord() throws {
        let cevm = try CEVMHarness()
        let taken = try record(cevm, "dsk")
        let disk = "\(taken.directory)/disk.qcow2"

        let info = try json(try cevm.run(["disk", "info", disk, "--json"]))
        #expect(info["format"] as? String == "qcow2")
        let chain = info["chain"] as? [[String: Any]] ?? []
        #expect(chain.count == 2, "record over the VM's base: \(chain)")
        #expect((chain.first?["allocatedClusters"] as? Int ?? 0) > 0, "the record holds the clusters the guest wrote")
        let human = try cevm.run(["disk", "info", disk])
        #expect(human.ok && human.stdout.contains("qcow2"), "\(human.stdout)")

        // An overlay over the record reads the same bytes (libqcow compares them).
        let overlay = "\(cevm.home)/over.qcow2"
        #expect(try cevm.run(["disk", "create-overlay", overlay, "--backing", disk]).ok)
        let verify = try cevm.run(["disk", "verify", overlay])
        #expect(verify.ok && verify.stdout.contains("identical"), "\(verify.stdout) \(verify.stderr)")
        let again = try cevm.run(["disk", "create-overlay", overlay, "--backing", disk])
        #expect(!again.ok && again.stderr.contains("exists"), "an existing overlay is never overwritten: \(again.stderr)")
    }

    @Test func diskCommandsRejectAHostileImage() throws {
        let cevm = try CEVMHarness()
        let bad = "\(cevm.home)/bad.qcow2"
        // A qcow2 magic with an L1 table of 2^31 entries.
        var header = [UInt8](repeating: 0, count: 512)
        header.replaceSubrange(0..<4, with: [0x51, 0x46, 0x49, 0xfb])
        header[7] = 3  // version
        header[23] = 16  // cluster_bits
        header[29] = 1  // size = 1 TiB (byte 24..31 big-endian)
        header.replaceSubrange(36..<40, with: [0x80, 0, 0, 0])  // l1_size
        header[47] = 0x01  // l1_table_offset
        header[99] = 4  // refcount_order
        header[103] = 104  // header_length
        try Files.writeAtomically(header, to: bad)
        for command in [["disk", "info", bad], ["disk", "verify", bad], ["inspect", bad, "/"]] {
            let result = try cevm.run(command)
            #expect(result.status != 0, "\(command) must fail")
            #expect(result.stderr.contains("l1") || result.stderr.contains("L1"), "\(command): \(result.stderr)")
        }
        let missing = try cevm.run(["inspect", "no-such-record", "/"])
        #expect(!missing.ok && missing.stderr.contains("no-such-record"), "\(missing.stderr)")
        let relative = try cevm.run(["inspect", bad, "etc"])
        #expect(!relative.ok && relative.stderr.contains("absolute"), "\(relative.stderr)")
    }

    /// The guest's own log, read out of the record's disk without booting the
    /// VM, ends at the tick the checkpoint caught.
    @Test func inspectReadsTheGuestLogOutOfARecord() throws {
        let cevm = try CEVMHarness()
        let taken = try record(cevm, "ins")
        let listing = try cevm.run(["inspect", taken.id, "/cevm", "--json"], timeout: 300)
        #expect(listing.ok, "\(listing.stderr)")
        let entries = (try? JSONSerialization.jsonObject(with: Data(listing.stdout.utf8)) as? [[String: Any]]) ?? []
        #expect(Set(entries.compactMap { $0["name"] as? String }).isSuperset(of: ["records", "workload.log"]), "\(listing.stdout)")

        let log = try cevm.run(["inspect", taken.directory, "/cevm/workload.log"], timeout: 300)
        #expect(log.ok, "\(log.stderr)")
        let counters = log.stdout.split(separator: "\n").compactMap { line -> Int? in
            guard line.hasPrefix("cevm-tick counter=") else { return nil }
            return Int(line.dropFirst("cevm-tick counter=".count).prefix { $0.isNumber })
        }
        #expect(counters.first == 1)
        #expect(counters == Array(1...max(1, counters.count)), "one line per tick, none missing")
        // The log is synced every tick; the record was cut between two ticks.
        #expect(counters.last == taken.lastTick, "log ends at \(counters.last ?? -1), checkpoint after tick \(taken.lastTick)")
    }
}
