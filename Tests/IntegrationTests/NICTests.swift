#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import Testing
import TestSupport

/// User-mode NICs end to end: the NIC and its MAC in the spec and the
/// status, its host forward bound by whichever QEMU runs the VM — New_VM
/// after a CEVM checkpoint (moved over at the switch-over), the restored
/// instance after a restore — with the MAC unchanged throughout.
@Suite(.serialized, .enabled(if: endToEndReady, "needs the cevm binary, QEMU and the bundled guest"))
struct NICEndToEndTests {
    func nics(_ cevm: borrowing CEVMHarness, _ name: String) throws -> [[String: Any]] {
        ((try cevm.status(name)["spec"] as? [String: Any])?["nics"] as? [[String: Any]]) ?? []
    }

    func qemuPID(_ cevm: borrowing CEVMHarness, _ name: String) throws -> Int32? {
        ((try cevm.status(name)["status"] as? [String: Any])?["qemuPID"] as? Int).map { Int32($0) }
    }

    @Test func aUserNICsForwardFollowsTheVMThroughACheckpointAndARestore() throws {
        let cevm = try CEVMHarness()
        let port = try freeTCPPort()
        let run = try cevm.run(["run", "web", "--accel", "tcg", "--nic", "user,hostfwd=tcp:127.0.0.1:\(port)-:7"])
        #expect(run.ok, "\(run.stderr)")
        let stored = try nics(cevm, "web")
        #expect(stored.count == 1)
        let mac = try #require(stored.first?["mac"] as? String)
        #expect(mac.hasPrefix("52:54:00:") && mac.count == 17)
        let text = try cevm.run(["status", "web"]).stdout
        #expect(text.contains("nic0:        \(mac), user, hostfwd tcp:127.0.0.1:\(port)-:7"), "\(text)")

        let first = try #require(try qemuPID(cevm, "web"))
        #expect(listeners(port: port) == [first], "the first instance listens on the forwarded port")
        #expect(canConnectTCP(port: port))
        _ = try cevm.waitForTicks("web", count: 3)

        // CEVM checkpoint: New_VM started without the forward, and holds it after the switch-over.
        let checkpoint = try cevm.run(["checkpoint", "web", "--mechanism", "cevm", "--json"])
        #expect(checkpoint.ok, "\(cevm.diagnose(checkpoint, "web"))")
        let second = try #require(try qemuPID(cevm, "web"))
        #expect(second != first)
        #expect(listeners(port: port) == [second], "New_VM listens on the forwarded port")
        #expect(canConnectTCP(port: port))
        #expect((try cevm.status("web")["status"] as? [String: Any])?["lostHostForwards"] == nil)
        #expect(try nics(cevm, "web").first?["mac"] as? String == mac)
        let record = try JSONSerialization.jsonObject(with: Data(checkpoint.stdout.utf8)) as? [String: Any]
        let manifest = try #require(record?["manifest"] as? [String: Any])
        let recordID = try #require(manifest["id"] as? String)
        let recordNICs = (manifest["spec"] as? [String: Any])?["nics"] as? [[String: Any]]
        #expect(recordNICs?.first?["mac"] as? String == mac, "the record keeps the NIC and its MAC")

        // Stop-and-save keeps the same QEMU, and its forward; a second CEVM checkpoint moves it again.
        let stopAndSave = try cevm.run(["checkpoint", "web", "--mechanism", "stop-and-save"])
        #expect(stopAndSave.ok, "\(cevm.diagnose(stopAndSave, "web"))")
        #expect(try qemuPID(cevm, "web") == second)
        #expect(listeners(port: port) == [second])
        let again = try cevm.run(["checkpoint", "web", "--mechanism", "cevm"])
        #expect(again.ok, "\(cevm.diagnose(again, "web"))")
        let moved = try #require(try qemuPID(cevm, "web"))
        #expect(moved != second)
        #expect(listeners(port: port) == [moved], "the next New_VM listens on the forwarded port")
        #expect(try nics(cevm, "web").first?["mac"] as? String == mac)

        // Stopped: nobody listens. Restored: the forward is bound again, the MAC the same.
        #expect(try cevm.run(["stop", "web"]).ok)
        #expect(listeners(port: port).isEmpty)
        let restore = try cevm.run(["restore", recordID])
        #expect(restore.ok, "\(restore.stderr)")
        let third = try #require(try qemuPID(cevm, "web"))
        #expect(listeners(port: port) == [third], "the restored instance listens on the forwarded port")
        #expect(canConnectTCP(port: port))
        #expect(try nics(cevm, "web").first?["mac"] as? String == mac)
        #expect(try cevm.run(["stop", "web"]).ok)
    }

    /// A copy restored under another name beside its running original would
    /// put two machines with one MAC on one network: the switch refuses it
    /// and nothing of the copy is left; on a copy of the network it runs.
    @Test func aCopyBesideItsOriginalNeedsACopyOfTheNetwork() throws {
        let cevm = try CEVMHarness()
        #expect(try cevm.run(["net", "create", "lab"]).ok)
        let run = try cevm.run(["run", "orig", "--accel", "tcg", "--nic", "net=lab"])
        #expect(run.ok, "\(run.stderr)")
        _ = try cevm.waitForTicks("orig", count: 3)
        let mac = try #require(try nics(cevm, "orig").first?["mac"] as? String)
        let checkpoint = try cevm.run(["checkpoint", "orig", "--mechanism", "stop-and-save"])
        #expect(checkpoint.ok, "\(cevm.diagnose(checkpoint, "orig"))")
        let id = String(checkpoint.stdout.split(separator: " ").first ?? "")

        let beside = try cevm.run(["restore", id, "--name", "twin"])
        #expect(!beside.ok)
        #expect(beside.stderr.contains("MAC \(mac) is already on this network (VM 'orig'"), "\(beside.stderr)")
        #expect(!Files.exists("\(cevm.home)/vms/twin/spec.json"), "a refused copy is no VM")
        #expect(try cevm.status("orig")["state"] as? String == "running")

        let copied = try cevm.run(["restore", id, "--name", "twin", "--network-suffix=-copy"])
        #expect(copied.ok, "\(cevm.diagnose(copied, "twin"))")
        let twin = try nics(cevm, "twin").first
        #expect(twin?["mac"] as? String == mac)
        #expect(try cevm.run(["status", "twin"]).stdout.contains("network lab-copy"))
        for vm in ["twin", "orig"] { #expect(try cevm.run(["stop", vm]).ok) }
        for net in ["lab", "lab-copy"] { #expect(try cevm.run(["net", "rm", net]).ok) }
    }

    @Test func refusedNICsMakeNoVM() throws {
        let cevm = try CEVMHarness()
        let network = try cevm.run(["run", "netted", "--accel", "tcg", "--nic", "net=lab"])
        #expect(!network.ok)
        #expect(network.stderr.contains("network 'lab' does not exist"), "\(network.stderr)")
        let hostile = try cevm.run(["run", "evil", "--accel", "tcg", "--nic", "user,id=x,script=/bin/sh"])
        #expect(!hostile.ok)
        #expect(hostile.stderr.contains("'id=x'"), "\(hostile.stderr)")
        #expect(!Files.exists("\(cevm.home)/vms/netted") && !Files.exists("\(cevm.home)/vms/evil"))
    }
}


/// The processes with a socket listening on TCP `port` (IPv4): the
/// listening sockets' inodes from /proc/net/tcp, found among each
/// process's descriptors.
func listeners(port: Int) -> Set<Int32> {
    guard let table = try? Files.readString("/proc/net/tcp") else { return [] }
    let wanted = String(format: ":%04X", port)
    var inodes: Set<String> = []
    for line in table.split(separator: "\n").dropFirst() {
        let fields = line.split(separator: " ")
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        guard fields.count > 9, fields[1].hasSuffix(wanted), fields[3] == "0A" else { continue }
        inodes.insert("socket:[\(fields[9])]")
    }
    guard !inodes.isEmpty, let entries = try? Files.list("/proc") else { return [] }
    var pids: Set<Int32> = []
    for entry in entries {
        guard let pid = Int32(entry), let fds = try? Files.list("/proc/\(entry)/fd") else { continue }
        for fd in fds {
            if let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/fd/\(fd)"), inodes.contains(link) {
                pids.insert(pid)
            }
        }
    }
    return pids
}
