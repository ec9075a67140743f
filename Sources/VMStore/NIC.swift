/// A VM's network interface: a virtio-net device with a MAC address kept in
/// the spec (so every instance and every restore of the VM shows the guest
/// the same NIC) and what its other end is attached to.
///
/// `--nic` values (`NIC.Request.parse`):
///
///     user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]…   QEMU user-mode networking
///     net=NAME[,mac=MAC]                                  a cevm network (its switch)
///
/// Nothing of a `--nic` value reaches QEMU's command line as text: it is
/// parsed into these values, which `QEMUCommandLine` writes out again, so a
/// value cannot add options (`id=`, `script=`, a second netdev).
public struct NIC: Codable, Sendable, Equatable {
    public var mac: MACAddress
    public var attachment: Attachment

    public enum Attachment: Codable, Sendable, Equatable {
        /// QEMU's user-mode networking (slirp: NAT, DHCP), with host ports
        /// forwarded into the guest.
        case user(hostForwards: [HostForward])
        /// A port on the cevm network `name` (its switch).
        case network(name: String)
    }

    public init(mac: MACAddress, attachment: Attachment) {
        self.mac = mac
        self.attachment = attachment
    }

    /// The host forwards of a user NIC; none for a network NIC.
    /// The cevm network it is attached to, if any.
    public var networkName: String? {
        if case .network(let name) = attachment { return name }
        return nil
    }

    public var hostForwards: [HostForward] {
        if case .user(let forwards) = attachment { return forwards }
        return []
    }

    /// A `--nic` value, parsed: the attachment and the MAC asked for, if any.
    public struct Request: Sendable, Equatable {
        public var attachment: Attachment
        public var mac: MACAddress?

        public init(attachment: Attachment, mac: MACAddress? = nil) {
            self.attachment = attachment
            self.mac = mac
        }

        /// Parses one `--nic` value. Every part is checked against what it
        /// may be; anything else is refused, naming the part.
        public static func parse(_ text: String) throws(NICError) -> Request {
            guard text.count <= 4096 else { throw NICError(value: String(text.prefix(64)) + "…", part: "", reason: "is too long") }
            let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard let kind = parts.first, !kind.isEmpty else {
                throw NICError(value: text, part: "", reason: "is empty: expected user[,hostfwd=…] or net=NAME[,mac=MAC]")
            }
            if kind == "user" {
                var forwards: [HostForward] = []
                for part in parts.dropFirst() {
                    guard part.hasPrefix("hostfwd=") else {
                        throw NICError(value: text, part: part, reason: "is not an option of a user NIC: expected hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT")
                    }
                    do {
                        forwards.append(try HostForward(parsing: String(part.dropFirst("hostfwd=".count))))
                    } catch {
                        throw NICError(value: text, part: part, reason: error.reason)
                    }
                }
                if let clash = HostForward.firstClash(in: forwards) {
                    throw NICError(value: text, part: "hostfwd=\(clash)", reason: "forwards a host port another hostfwd of the NIC forwards")
                }
                return Request(attachment: .user(hostForwards: forwards))
            }
            if kind.hasPrefix("net=") {
                let name = String(kind.dropFirst("net=".count))
                do { try NIC.validateNetworkName(name) } catch {
                    throw NICError(value: text, part: kind, reason: error.reason)
                }
                var mac: MACAddress?
                for part in parts.dropFirst() {
                    guard part.hasPrefix("mac="), mac == nil else {
                        throw NICError(
                            value: text, part: part,
                            reason: part.hasPrefix("mac=") ? "repeats mac=" : "is not an option of a network NIC: expected mac=MAC")
                    }
                    do { mac = try MACAddress(parsing: String(part.dropFirst("mac=".count))) } catch {
                        throw NICError(value: text, part: part, reason: error.reason)
                    }
                }
                return Request(attachment: .network(name: name), mac: mac)
            }
            throw NICError(value: text, part: kind, reason: "is not a NIC kind: expected user[,hostfwd=…] or net=NAME[,mac=MAC]")
        }
    }

    /// The NICs for `requests`, in order: a requested MAC is kept, every
    /// other NIC gets a random locally administered one (52:54:00:xx:xx:xx,
    /// QEMU's prefix) that no other NIC of the VM has.
    public static func make(
        _ requests: [Request], random: () -> UInt32 = { UInt32.random(in: 0...0xFF_FFFF) }
    ) throws(NICError) -> [NIC] {
        var taken = Set(requests.compactMap(\.mac))
        if taken.count != requests.compactMap(\.mac).count {
            let seen = requests.compactMap(\.mac)
            let repeated = seen.first { mac in seen.filter { $0 == mac }.count > 1 }
            throw NICError(value: "mac=\(repeated?.description ?? "")", part: "", reason: "is given to two NICs: a VM's MACs are unique")
        }
        var nics: [NIC] = []
        for request in requests {
            var mac = request.mac
            while mac == nil {
                let candidate = MACAddress.generated(random() & 0xFF_FFFF)
                if !taken.contains(candidate) { mac = candidate }
            }
            guard let mac else { continue }
            taken.insert(mac)
            nics.append(NIC(mac: mac, attachment: request.attachment))
        }
        if let clash = HostForward.firstClash(in: nics.flatMap(\.hostForwards)) {
            throw NICError(value: "hostfwd=\(clash)", part: "", reason: "forwards a host port another NIC forwards")
        }
        return nics
    }

    /// The maximum number of NICs of a VM.
    public static let maximumCount = 8

    /// A cevm network's name: the rules of a VM name (`VMName`), for it
    /// names a directory and a socket under `$CEVM_HOME` too.
    public static func validateNetworkName(_ name: String) throws(NICError.Part) {
        do { _ = try VMName(name) } catch {
            throw NICError.Part(
                reason: "is not a network name: use 1 to \(VMName.maximumLength) letters, digits, '.', '_' and '-', "
                    + "not starting with '.' or '-'")
        }
    }

    /// Checks a NIC read back from a file (`spec.json`, a manifest).
    public func validate() throws(InvalidValue) {
        if !mac.isUnicastNonZero {
            throw InvalidValue(what: "NIC MAC", value: mac.description, expected: "a unicast, non-zero MAC address")
        }
        switch attachment {
        case .user(let forwards):
            for forward in forwards {
                do { try forward.validate() } catch {
                    throw InvalidValue(what: "NIC host forward", value: "'\(forward)'", expected: error.reason)
                }
            }
        case .network(let name):
            do { try NIC.validateNetworkName(name) } catch {
                throw InvalidValue(what: "NIC network", value: "'\(name)'", expected: "a network name (letters, digits, '.', '_', '-')")
            }
        }
    }

    /// What `cevm status` says of the NIC.
    public var summary: String {
        switch attachment {
        case .user(let forwards):
            return "user" + (forwards.isEmpty ? "" : ", " + forwards.map { "hostfwd \($0)" }.joined(separator: ", "))
        case .network(let name):
            return "network \(name)"
        }
    }
}

/// A refused `--nic` value: the value, the part of it that is wrong, and why.
public struct NICError: Error, Sendable, Equatable, CustomStringConvertible {
    public var value: String
    public var part: String
    public var reason: String

    /// Why one part is wrong, before it is put in its value's context.
    public struct Part: Error, Sendable, Equatable {
        public var reason: String
    }

    public var description: String {
        part.isEmpty ? "--nic \(value) \(reason)" : "--nic '\(value)': '\(part)' \(reason)"
    }
}

/// A MAC address, 6 bytes; written `52:54:00:12:34:56`.
public struct MACAddress: Codable, Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// Six pairs of hex digits separated by ':', unicast (the low bit of the
    /// first byte clear) and not all zero.
    public init(parsing text: String) throws(NICError.Part) {
        let pairs = text.split(separator: ":", omittingEmptySubsequences: false)
        guard pairs.count == 6,
            pairs.allSatisfy({ $0.count == 2 && $0.unicodeScalars.allSatisfy { $0.properties.isASCIIHexDigit } })
        else { throw NICError.Part(reason: "is not a MAC address: expected six hex pairs like 52:54:00:12:34:56") }
        var bytes: [UInt8] = []
        for pair in pairs {
            guard let byte = UInt8(pair, radix: 16) else { throw NICError.Part(reason: "is not a MAC address") }
            bytes.append(byte)
        }
        self.bytes = bytes
        guard isUnicastNonZero else {
            throw NICError.Part(reason: "is not a unicast MAC address: the first byte must be even, and the address not all zero")
        }
    }

    /// 52:54:00 followed by the low 3 bytes of `low`.
    public static func generated(_ low: UInt32) -> MACAddress {
        MACAddress(uncheckedBytes: [0x52, 0x54, 0x00, UInt8((low >> 16) & 0xFF), UInt8((low >> 8) & 0xFF), UInt8(low & 0xFF)])
    }

    private init(uncheckedBytes: [UInt8]) { bytes = uncheckedBytes }

    public var isUnicastNonZero: Bool {
        bytes.count == 6 && bytes[0] & 1 == 0 && bytes.contains { $0 != 0 }
    }

    public var description: String {
        bytes.map { byte in
            let text = String(byte, radix: 16)
            return text.count == 1 ? "0" + text : text
        }.joined(separator: ":")
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(parsing: text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "MAC '\(text)' \(error.reason)"))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// One forward of a host port into the guest of a user NIC: QEMU's
/// `hostfwd=PROTO:[HOSTADDR]:HOSTPORT-:GUESTPORT` (the guest address is
/// left to QEMU: the guest's DHCP address).
public struct HostForward: Codable, Sendable, Hashable, CustomStringConvertible {
    public enum Proto: String, Codable, Sendable {
        case tcp, udp
    }

    public var proto: Proto
    /// An IPv4 address in dotted-quad form; nil: every address of the host.
    public var hostAddress: String?
    public var hostPort: Int
    public var guestPort: Int

    public static let portRange = 1...65535

    public init(proto: Proto, hostAddress: String?, hostPort: Int, guestPort: Int) {
        self.proto = proto
        self.hostAddress = hostAddress
        self.hostPort = hostPort
        self.guestPort = guestPort
    }

    /// `tcp:127.0.0.1:8080-:22`, `udp::5353-:53`.
    public init(parsing text: String) throws(NICError.Part) {
        let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 4, fields[2].hasSuffix("-") else {
            throw NICError.Part(reason: "is not a host forward: expected hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT (or udp)")
        }
        guard let proto = Proto(rawValue: fields[0]) else {
            throw NICError.Part(reason: "names protocol '\(fields[0])': expected tcp or udp")
        }
        let address = fields[1].isEmpty ? nil : fields[1]
        let hostPort = try Self.port(String(fields[2].dropLast()), "host port")
        let guestPort = try Self.port(fields[3], "guest port")
        self.init(proto: proto, hostAddress: address, hostPort: hostPort, guestPort: guestPort)
        try validate()
    }

    public func validate() throws(NICError.Part) {
        if let hostAddress, !Self.isDottedQuad(hostAddress) {
            throw NICError.Part(reason: "has host address '\(hostAddress)': expected an IPv4 address like 127.0.0.1")
        }
        for (port, what) in [(hostPort, "host port"), (guestPort, "guest port")] where !Self.portRange.contains(port) {
            throw NICError.Part(reason: "has \(what) \(port): expected 1 to 65535")
        }
    }

    private static func port(_ text: String, _ what: String) throws(NICError.Part) -> Int {
        guard !text.isEmpty, text.count <= 5, text.unicodeScalars.allSatisfy({ ("0"..."9").contains($0) }), let value = Int(text),
            portRange.contains(value)
        else { throw NICError.Part(reason: "has \(what) '\(text)': expected a number from 1 to 65535") }
        return value
    }

    /// Four decimal numbers 0–255 separated by '.', no sign, no spaces.
    public static func isDottedQuad(_ text: String) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4
            && parts.allSatisfy { part in
                (1...3).contains(part.count) && part.unicodeScalars.allSatisfy { ("0"..."9").contains($0) } && (Int(part) ?? 256) <= 255
            }
    }

    /// QEMU's `hostfwd` value and `hostfwd_add`'s rule: `tcp:127.0.0.1:8080-:22`.
    public var description: String { "\(proto.rawValue):\(hostAddress ?? ""):\(hostPort)-:\(guestPort)" }

    /// `hostfwd_remove`'s rule: the host side only, `tcp:127.0.0.1:8080`.
    public var hostSide: String { "\(proto.rawValue):\(hostAddress ?? ""):\(hostPort)" }

    /// Whether two forwards would bind the same host port.
    public func clashes(with other: HostForward) -> Bool {
        proto == other.proto && hostPort == other.hostPort
            && (hostAddress == nil || other.hostAddress == nil || hostAddress == other.hostAddress)
    }

    /// The first forward that clashes with an earlier one.
    public static func firstClash(in forwards: [HostForward]) -> HostForward? {
        for (index, forward) in forwards.enumerated() where forwards[..<index].contains(where: { $0.clashes(with: forward) }) {
            return forward
        }
        return nil
    }
}
