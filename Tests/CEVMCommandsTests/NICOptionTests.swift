import Testing
import VMStore

@testable import CEVMCommands

@Suite struct NICOptionTests {
    @Test func runParsesEveryNICWithItsOwnMAC() throws {
        let nics = try Run.parseNICs(["user,hostfwd=tcp:127.0.0.1:8022-:22", "user", "net=lab,mac=52:54:00:00:00:09"])
        #expect(nics.count == 3)
        #expect(Set(nics.map(\.mac)).count == 3)
        #expect(nics[2].mac.description == "52:54:00:00:00:09")
        #expect(throws: NICError.self) { try Run.parseNICs(["user,script=/etc/qemu-ifup"]) }
        #expect(throws: (any Error).self) { try Run.parseNICs(Array(repeating: "user", count: NIC.maximumCount + 1)) }
    }

    @Test func statusShowsEachNICAndWhatALostForwardIs() throws {
        let nics = try Run.parseNICs(["user,hostfwd=tcp:127.0.0.1:8022-:22,hostfwd=udp::5353-:53", "net=lab,mac=52:54:00:00:00:09"])
        let lines = Status.describeNICs(nics, lost: ["nic0 udp::5353-:53"])
        #expect(
            lines == [
                "nic0:        \(nics[0].mac), user, hostfwd tcp:127.0.0.1:8022-:22, hostfwd udp::5353-:53 (lost: udp::5353-:53)",
                "nic1:        52:54:00:00:00:09, network lab",
            ])
    }
}
