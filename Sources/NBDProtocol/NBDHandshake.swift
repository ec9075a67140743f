/// The server side of the fixed newstyle handshake as a value: bytes from
/// the client go in, bytes for the client and the outcome come out. It does
/// no I/O and keeps no reference to exports; each call is given the catalog
/// to answer from.
///
/// ```text
///  server                                   client
///    | NBDMAGIC IHAVEOPT flags(FIXED|NO_ZEROES)  |
///    |------------------------------------------>|
///    |                     client flags (32 bit) |
///    |<------------------------------------------|
///    |          IHAVEOPT option length data      |   repeated:
///    |<------------------------------------------|   LIST, INFO, unknown...
///    |     reply(ies) ... final ACK or ERR_*      |
///    |------------------------------------------>|
///    |          IHAVEOPT GO length data          |
///    |<------------------------------------------|
///    |  REP_INFO(EXPORT) REP_INFO(...) REP_ACK   |   → transmission
///    |------------------------------------------>|
/// ```
///
/// Usage: send `greeting` first; then call `receive` with every byte the
/// client has sent and not yet been consumed, drop `consumed` bytes, send
/// `output`, and act on `outcome`; repeat while a call consumes bytes or
/// produces an outcome. A call with nothing to do returns `needsMoreInput`.
///
/// Limits (all named in `Configuration`): option data up to 64 KiB is read
/// and answered; longer data is skipped as it arrives (never buffered) and
/// answered `NBD_REP_ERR_TOO_BIG`; data longer than 1 MiB, or more than 256
/// options on one connection, is taken as hostile and closes the connection.
public struct NBDHandshake: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// The constraints advertised with `NBD_INFO_BLOCK_SIZE`.
        public var blockSizes: NBDBlockSizes
        /// Longest option data that is read and interpreted. The longest
        /// meaningful `NBD_OPT_GO` (a 4096-byte name and every information
        /// type) is far below it.
        public var maximumOptionData: Int
        /// Longest option data skipped with `NBD_REP_ERR_TOO_BIG` before the
        /// connection is closed instead.
        public var maximumOptionSkip: Int
        /// Options allowed on one connection (QEMU sends three or four).
        public var maximumOptions: Int

        public init(
            blockSizes: NBDBlockSizes = .standard, maximumOptionData: Int = 64 << 10,
            maximumOptionSkip: Int = 1 << 20, maximumOptions: Int = 256
        ) {
            self.blockSizes = blockSizes
            self.maximumOptionData = maximumOptionData
            self.maximumOptionSkip = max(maximumOptionSkip, maximumOptionData)
            self.maximumOptions = maximumOptions
        }
    }

    public enum State: Sendable, Hashable {
        /// The greeting is out; the 32-bit client flags are next.
        case awaitingClientFlags
        /// Waiting for an option request.
        case haggling
        /// Dropping the data of an over-long option before answering it.
        case skipping(option: NBDOptionCode, remaining: UInt64)
        /// The handshake succeeded; the rest of the stream is requests.
        case transmission
        /// The handshake ended without transmission (abort or violation).
        case closed
    }

    /// How a call to `receive` ends the handshake.
    public enum Outcome: Sendable, Hashable {
        /// Send `output`, then run the transmission phase with this session.
        case transmission(NBDSession)
        /// The client sent `NBD_OPT_ABORT`: send `output` (the ACK), then close.
        case aborted
        /// The client broke the protocol: send `output` if any, then close.
        case violation(NBDProtocolError)
    }

    public struct Step: Sendable, Hashable {
        /// Bytes of the input used; drop them before the next call.
        public var consumed: Int
        /// Bytes to send to the client, before acting on `outcome`.
        public var output: [UInt8]
        public var outcome: Outcome?

        /// True when the call needs more input to make progress.
        public var needsMoreInput: Bool { consumed == 0 && output.isEmpty && outcome == nil }

        static let needMore = Step(consumed: 0, output: [], outcome: nil)
    }

    public let configuration: Configuration
    public private(set) var state: State = .awaitingClientFlags
    public private(set) var clientFlags: NBDClientFlags = []
    /// Option requests received so far.
    public private(set) var optionCount = 0
    /// Bytes consumed since the start of the connection.
    public private(set) var streamOffset: UInt64 = 0

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// The first bytes the server sends.
    public var greeting: [UInt8] { NBDGreeting().encoded() }

    /// Takes at most one message (the client flags, or one option request,
    /// or part of an over-long option being skipped) from the front of
    /// `bytes`. `catalog` is the set of exports at this moment.
    public mutating func receive(_ bytes: some RandomAccessCollection<UInt8>, catalog: NBDCatalog) -> Step {
        var step = process(bytes, catalog: catalog)
        streamOffset += UInt64(step.consumed)
        if case .transmission(var session) = step.outcome {
            session.streamOffset = streamOffset
            step.outcome = .transmission(session)
        }
        return step
    }

    private mutating func process(_ bytes: some RandomAccessCollection<UInt8>, catalog: NBDCatalog) -> Step {
        switch state {
        case .awaitingClientFlags:
            guard let raw = bigEndian(UInt32.self, in: bytes, at: 0) else { return .needMore }
            let flags = NBDClientFlags(rawValue: raw)
            guard NBDClientFlags.known.isSuperset(of: flags) else {
                return close(consumed: NBD.clientFlagsSize, .unknownClientFlags(raw))
            }
            clientFlags = flags
            state = .haggling
            return Step(consumed: NBD.clientFlagsSize, output: [], outcome: nil)

        case .haggling:
            var reader = ByteReader(bytes)
            guard let magic = reader.u64(), let rawOption = reader.u32(), let length = reader.u32() else {
                return .needMore
            }
            guard magic == NBD.optionMagic else {
                return close(consumed: 0, .badOptionMagic(magic, atByte: streamOffset))
            }
            let option = NBDOptionCode(rawValue: rawOption)
            guard optionCount < configuration.maximumOptions else {
                return close(consumed: 0, .tooManyOptions(limit: configuration.maximumOptions))
            }
            if Int(length) > configuration.maximumOptionData {
                // NBD_OPT_EXPORT_NAME has no error reply: it can only be refused by hanging up.
                guard option != .exportName, Int(length) <= configuration.maximumOptionSkip else {
                    let limit = option == .exportName ? configuration.maximumOptionData : configuration.maximumOptionSkip
                    return close(
                        consumed: 0, .optionTooLong(option: option, length: length, limit: limit, atByte: streamOffset))
                }
                optionCount += 1
                state = .skipping(option: option, remaining: UInt64(length))
                return Step(consumed: NBD.optionHeaderSize, output: [], outcome: nil)
            }
            guard let data = reader.take(Int(length)) else { return .needMore }
            optionCount += 1
            return answer(option, data: data, consumed: reader.consumed, catalog: catalog)

        case .skipping(let option, let remaining):
            let available = UInt64(bytes.count)
            guard available > 0 else { return .needMore }
            let dropped = min(available, remaining)
            if dropped < remaining {
                state = .skipping(option: option, remaining: remaining - dropped)
                return Step(consumed: Int(dropped), output: [], outcome: nil)
            }
            state = .haggling
            let reply = NBDOptionReply.error(
                option, .errTooBig, "option data exceeds \(configuration.maximumOptionData) bytes")
            return Step(consumed: Int(dropped), output: reply.encoded(), outcome: nil)

        case .transmission, .closed:
            return Step(consumed: 0, output: [], outcome: .violation(.handshakeOver))
        }
    }

    private mutating func close(consumed: Int, _ error: NBDProtocolError) -> Step {
        state = .closed
        return Step(consumed: consumed, output: [], outcome: .violation(error))
    }

    private mutating func answer(_ code: NBDOptionCode, data: [UInt8], consumed: Int, catalog: NBDCatalog) -> Step {
        let option: NBDOption
        switch NBDOption.parse(code: code, data: data) {
        case .success(let parsed):
            option = parsed
        case .failure(let refusal):
            if code == .exportName {
                let name = String(decoding: data.prefix(256), as: UTF8.self)
                return close(consumed: consumed, .exportNameRefused(name: printable(name), reason: refusal.message))
            }
            return Step(consumed: consumed, output: NBDOptionReply.error(code, refusal.type, refusal.message).encoded())
        }

        switch option {
        case .exportName(let name):
            guard let export = catalog[name] else {
                return close(consumed: consumed, .exportNameRefused(name: printable(name), reason: "no such export"))
            }
            state = .transmission
            let reply = NBDExportNameReply(size: export.size, flags: export.transmissionFlags)
            return Step(
                consumed: consumed, output: reply.encoded(noZeroes: clientFlags.contains(.noZeroes)),
                outcome: .transmission(session(export, honoursBlockSizes: false)))

        case .abort:
            state = .closed
            return Step(consumed: consumed, output: NBDOptionReply.ack(.abort).encoded(), outcome: .aborted)

        case .list:
            var output: [UInt8] = []
            for export in catalog.sorted {
                output += NBDOptionReply.server(name: export.name, description: export.description).encoded()
            }
            output += NBDOptionReply.ack(.list).encoded()
            return Step(consumed: consumed, output: output)

        case .info(let request), .go(let request):
            guard let export = catalog[request.name] else {
                let reply = NBDOptionReply.error(code, .errUnknown, "no export named '\(printable(request.name))'")
                return Step(consumed: consumed, output: reply.encoded())
            }
            var output = NBDOptionReply.info(code, .export(size: export.size, flags: export.transmissionFlags)).encoded()
            if request.items.contains(.name) {
                output += NBDOptionReply.info(code, .name(export.name)).encoded()
            }
            if request.items.contains(.description), !export.description.isEmpty {
                output += NBDOptionReply.info(code, .description(export.description)).encoded()
            }
            // Sent whether asked or not: a client may ignore it (proto.md NBD_REP_INFO).
            let sizes = configuration.blockSizes
            output += NBDOptionReply.info(
                code, .blockSize(minimum: sizes.minimum, preferred: sizes.preferred, maximum: sizes.maximum)
            ).encoded()
            output += NBDOptionReply.ack(code).encoded()
            guard code == .go else { return Step(consumed: consumed, output: output) }
            state = .transmission
            return Step(
                consumed: consumed, output: output,
                outcome: .transmission(session(export, honoursBlockSizes: request.items.contains(.blockSize))))

        case .structuredReply:
            let reply = NBDOptionReply.error(code, .errUnsupported, "structured replies are not supported; simple replies only")
            return Step(consumed: consumed, output: reply.encoded())

        case .other(let other, _):
            let reply = NBDOptionReply.error(other, .errUnsupported, "\(other) is not supported")
            return Step(consumed: consumed, output: reply.encoded())
        }
    }

    private func session(_ export: NBDExportInfo, honoursBlockSizes: Bool) -> NBDSession {
        NBDSession(
            export: export, clientFlags: clientFlags, blockSizes: configuration.blockSizes,
            clientHonoursBlockSizes: honoursBlockSizes, streamOffset: streamOffset)
    }
}

extension NBDHandshake.Step {
    init(consumed: Int, output: [UInt8]) {
        self.init(consumed: consumed, output: output, outcome: nil)
    }
}
