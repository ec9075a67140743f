import CEVMSystem
import Foundation
import Testing
import VMStore

@Suite struct NICParserTests {
    func parse(_ text: String) throws(NICError) -> NIC.Request { try NIC.Request.parse(text) }

    @Test func userNICs() throws {
        #expect(try parse("user") == NIC.Request(attachment: .user(hostForwards: [])))
        let request = try parse("user,hostfwd=tcp:127.0.0.1:8080-:22,hostfwd=udp::5353-:53,hostfwd=tcp::65535-:1")
        #expect(
            request.attachment
                == .user(hostForwards: [
                    HostForward(proto: .tcp, hostAddress: "127.0.0.1", hostPort: 8080, guestPort: 22),
                    HostForward(proto: .udp, hostAddress: nil, hostPort: 5353, guestPort: 53),
                    HostForward(proto: .tcp, hostAddress: nil, hostPort: 65535, guestPort: 1),
                ]))
        #expect(request.mac == nil)
        #expect(request.attachment == .user(hostForwards: NIC(mac: .generated(1), attachment: request.attachment).hostForwards))
    }

    @Test func forwardsWriteBackAsQEMUTakesThem() throws {
        let forward = try HostForward(parsing: "tcp:10.0.0.1:80-:8080")
        #expect(forward.description == "tcp:10.0.0.1:80-:8080")
        #expect(forward.hostSide == "tcp:10.0.0.1:80")
        #expect(try HostForward(parsing: "udp::53-:53").description == "udp::53-:53")
    }

    @Test func networkNICs() throws {
        #expect(try parse("net=lab") == NIC.Request(attachment: .network(name: "lab")))
        let request = try parse("net=lab-2.a_b,mac=52:54:00:AB:cd:01")
        #expect(request.attachment == .network(name: "lab-2.a_b"))
        #expect(request.mac?.description == "52:54:00:ab:cd:01")
    }

    /// Each refusal names the part that is wrong.
    @Test(arguments: [
        ("", ""),
        ("bridge", "bridge"),
        ("user,", ""),
        ("user,,hostfwd=tcp::1-:2", ""),
        ("user,id=x", "id=x"),
        ("user,script=/bin/sh", "script=/bin/sh"),
        ("user,hostfwd=tcp::1-:2,id=nic9", "id=nic9"),
        ("user,hostfwd=tcp::1-:2,smb=/", "smb=/"),
        ("user,net=10.0.0.0/8", "net=10.0.0.0/8"),
        ("user,hostfwd=tcp::0-:22", "hostfwd=tcp::0-:22"),
        ("user,hostfwd=tcp::65536-:22", "hostfwd=tcp::65536-:22"),
        ("user,hostfwd=tcp::22-:0", "hostfwd=tcp::22-:0"),
        ("user,hostfwd=tcp::-22-:22", "hostfwd=tcp::-22-:22"),
        ("user,hostfwd=tcp::+22-:22", "hostfwd=tcp::+22-:22"),
        ("user,hostfwd=tcp:: 22-:22", "hostfwd=tcp:: 22-:22"),
        ("user,hostfwd=sctp::22-:22", "hostfwd=sctp::22-:22"),
        ("user,hostfwd=tcp:localhost:22-:22", "hostfwd=tcp:localhost:22-:22"),
        ("user,hostfwd=tcp:1.2.3:22-:22", "hostfwd=tcp:1.2.3:22-:22"),
        ("user,hostfwd=tcp:1.2.3.256:22-:22", "hostfwd=tcp:1.2.3.256:22-:22"),
        ("user,hostfwd=tcp:[::1]:22-:22", "hostfwd=tcp:[::1]:22-:22"),
        ("user,hostfwd=tcp::22-10.0.2.15:22", "hostfwd=tcp::22-10.0.2.15:22"),
        ("user,hostfwd=tcp::22:22", "hostfwd=tcp::22:22"),
        ("user,hostfwd=tcp::22-:22\n", "hostfwd=tcp::22-:22\n"),
        ("user,hostfwd=tcp::22-:22=x", "hostfwd=tcp::22-:22=x"),
        ("user,hostfwd=tcp::22-:22,hostfwd=tcp:127.0.0.1:22-:23", "hostfwd=tcp:127.0.0.1:22-:23"),
        ("user ", "user "),
        ("USER", "USER"),
        ("net=", "net="),
        ("net=../etc", "net=../etc"),
        ("net=a/b", "net=a/b"),
        ("net=a b", "net=a b"),
        ("net=-x", "net=-x"),
        ("net=lab=x", "net=lab=x"),
        ("net=lab,id=x", "id=x"),
        ("net=lab,script=/tmp/x", "script=/tmp/x"),
        ("net=lab,fd=3", "fd=3"),
        ("net=lab,mac=52:54:00:00:00:01,mac=52:54:00:00:00:02", "mac=52:54:00:00:00:02"),
        ("net=lab,mac=01:00:5e:00:00:01", "mac=01:00:5e:00:00:01"),
        ("net=lab,mac=ff:ff:ff:ff:ff:ff", "mac=ff:ff:ff:ff:ff:ff"),
        ("net=lab,mac=00:00:00:00:00:00", "mac=00:00:00:00:00:00"),
        ("net=lab,mac=52:54:00:00:00", "mac=52:54:00:00:00"),
        ("net=lab,mac=52-54-00-00-00-01", "mac=52-54-00-00-00-01"),
        ("net=lab,mac=52:54:00:00:00:0g", "mac=52:54:00:00:00:0g"),
        ("net=lab,mac=52:54:00:00:00:001", "mac=52:54:00:00:00:001"),
        ("net=lab,hostfwd=tcp::1-:2", "hostfwd=tcp::1-:2"),
        ("user,mac=52:54:00:00:00:01", "mac=52:54:00:00:00:01"),
    ])
    func refuses(value: String, part: String) {
        let error = #expect(throws: NICError.self) { try NIC.Request.parse(value) }
        #expect(error?.part == part, "\(value): \(error.map { "\($0)" } ?? "no error")")
        #expect(error?.description.contains("--nic") == true)
    }

    @Test func messagesSayWhatIsWrong() {
        let error = #expect(throws: NICError.self) { try NIC.Request.parse("user,hostfwd=tcp::99999-:22") }
        #expect(error?.description.contains("65535") == true, "\(error.map { "\($0)" } ?? "")")
        let kind = #expect(throws: NICError.self) { try NIC.Request.parse("tap,ifname=x") }
        #expect(kind?.description == "--nic 'tap,ifname=x': 'tap' is not a NIC kind: expected user[,hostfwd=…] or net=NAME[,mac=MAC]")
    }
}

@Suite struct NICAllocationTests {
    @Test func macsAreGeneratedOnceAndUnique() throws {
        // A generator that repeats itself: the second NIC must not get the first's MAC.
        var draws: [UInt32] = [0x123456, 0x123456, 0xABCDEF]
        let nics = try NIC.make(
            [NIC.Request(attachment: .user(hostForwards: [])), NIC.Request(attachment: .network(name: "lab"))],
            random: { draws.removeFirst() })
        #expect(nics.map(\.mac.description) == ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"])
        #expect(nics.allSatisfy { $0.mac.isUnicastNonZero })
    }

    @Test func aGivenMACIsKeptAndNotHandedOutAgain() throws {
        let given = try MACAddress(parsing: "52:54:00:00:00:07")
        var draws: [UInt32] = [7, 8]
        let nics = try NIC.make(
            [NIC.Request(attachment: .user(hostForwards: [])), NIC.Request(attachment: .network(name: "lab"), mac: given)],
            random: { draws.removeFirst() })
        #expect(nics.map(\.mac.description) == ["52:54:00:00:00:08", "52:54:00:00:00:07"])
    }

    @Test func twoNICsCannotShareAMACOrAHostPort() throws {
        let mac = try MACAddress(parsing: "52:54:00:00:00:07")
        #expect(throws: NICError.self) {
            try NIC.make([NIC.Request(attachment: .network(name: "a"), mac: mac), NIC.Request(attachment: .network(name: "b"), mac: mac)])
        }
        let forward = HostForward(proto: .tcp, hostAddress: nil, hostPort: 2222, guestPort: 22)
        let other = HostForward(proto: .tcp, hostAddress: "127.0.0.1", hostPort: 2222, guestPort: 23)
        #expect(throws: NICError.self) {
            try NIC.make([NIC.Request(attachment: .user(hostForwards: [forward])), NIC.Request(attachment: .user(hostForwards: [other]))])
        }
        // UDP and TCP on the same port, or two addresses, do not clash.
        let udp = HostForward(proto: .udp, hostAddress: nil, hostPort: 2222, guestPort: 22)
        let a = HostForward(proto: .tcp, hostAddress: "127.0.0.1", hostPort: 80, guestPort: 80)
        let b = HostForward(proto: .tcp, hostAddress: "127.0.0.2", hostPort: 80, guestPort: 80)
        #expect(try NIC.make([NIC.Request(attachment: .user(hostForwards: [forward, udp, a, b]))]).count == 1)
    }
}

@Suite struct NICSpecTests {
    func spec(nics: [NIC]) throws -> VMSpec {
        VMSpec(
            name: try VMName("vm1"), memoryMiB: 64, vcpus: 1, cpuset: nil, accel: .tcg, machine: "q35", boot: .disk, disk: nil,
            bundledGuest: false, nics: nics)
    }

    @Test func nicsRoundTripAndOlderSpecsHaveNone() throws {
        let nics = try NIC.make([
            try NIC.Request.parse("user,hostfwd=tcp:127.0.0.1:8080-:22"), try NIC.Request.parse("net=lab,mac=52:54:00:00:00:09"),
        ])
        let value = try spec(nics: nics)
        let data = try JSONEncoder().encode(value)
        #expect(try JSONDecoder().decode(VMSpec.self, from: data) == value)
        #expect(String(decoding: data, as: UTF8.self).contains(#""mac":"52:54:00:00:00:09""#))
        var object = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
        object.removeValue(forKey: "nics")
        let older = try JSONDecoder().decode(VMSpec.self, from: JSONSerialization.data(withJSONObject: object))
        #expect(older.nics.isEmpty)
        var same = older
        same.nics = nics
        #expect(same == value)
    }

    /// A spec file edited by hand (or corrupted) is checked as `--nic` is.
    @Test func specsReadBackAreValidated() throws {
        let good = try spec(nics: try NIC.make([try NIC.Request.parse("user,hostfwd=tcp::8080-:22")]))
        try good.validate()
        let text = String(decoding: try JSONEncoder().encode(good), as: UTF8.self)
        for (from, to) in [
            ("52:54:00", "01:54:00"), ("\"hostPort\":8080", "\"hostPort\":0"), ("\"tcp\"", "\"tcp,id=x\""),
        ] {
            let bad = text.replacingOccurrences(of: from, with: to)
            #expect(bad != text)
            let decoded = try? JSONDecoder().decode(VMSpec.self, from: Data(bad.utf8))
            if let decoded { #expect(throws: InvalidValue.self) { try decoded.validate() } }
        }
        let hostile = NIC(mac: .generated(1), attachment: .user(hostForwards: [HostForward(proto: .tcp, hostAddress: "1.2.3.4,id=x", hostPort: 1, guestPort: 2)]))
        #expect(throws: InvalidValue.self) { try spec(nics: [hostile]).validate() }
        let network = NIC(mac: .generated(1), attachment: .network(name: "../x"))
        #expect(throws: InvalidValue.self) { try spec(nics: [network]).validate() }
        let twins = [NIC(mac: .generated(1), attachment: .user(hostForwards: [])), NIC(mac: .generated(1), attachment: .network(name: "x"))]
        #expect(throws: InvalidValue.self) { try spec(nics: twins).validate() }
        let many = (0..<(NIC.maximumCount + 1)).map { NIC(mac: .generated(UInt32($0 + 1)), attachment: .user(hostForwards: [])) }
        #expect(throws: InvalidValue.self) { try spec(nics: many).validate() }
    }
}
