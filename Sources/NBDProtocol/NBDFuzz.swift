/// The body of the libFuzzer target (scripts/fuzz-nbd) and of the regression
/// tests that replay its findings.
///
/// Input layout: byte 0 chooses the feeding pattern and the limits; the rest
/// is a client's byte stream (client flags, options, then requests). The
/// stream is run through the handshake machine and the request decoder
/// twice, whole and drip-fed in small chunks, and the two transcripts must be
/// identical. Along the way every step is checked: no step consumes more
/// than it was given, every validated command lies inside the export, an
/// oversized WRITE is never performed. The option and request decoders are
/// also run directly on the stream, with encode/decode round trips. Any
/// thrown `NBDProtocolError` is an accepted outcome; a trap is a finding.
public enum NBDFuzz {
    /// The exports the fuzzed server offers.
    public static let catalog = NBDCatalog([
        NBDExportInfo(name: "disk", description: "fuzz disk", size: 1 << 20, capabilities: .writable),
        NBDExportInfo(name: "ro", size: 65536 + 7, capabilities: [.readOnly, .flush]),
        NBDExportInfo(name: "", size: 0, capabilities: [.flush, .fua]),
    ])

    /// Small limits, so that every branch is reachable with small inputs.
    static let smallSizes = NBDBlockSizes(minimum: 512, preferred: 4096, maximum: 8192) ?? .standard

    public static func exercise(_ input: [UInt8]) {
        guard let selector = input.first else { return }
        let stream = Array(input.dropFirst())
        let small = selector & 0x80 != 0

        let whole = replay(stream, chunk: stream.count + 1, small: small)
        let drip = replay(stream, chunk: Int(selector & 0x0f) + 1, small: small)
        if whole != drip { trap("feeding the stream in chunks changed the outcome") }

        // The option parser on the raw bytes, with a round trip.
        let code = NBDOptionCode(rawValue: UInt32(selector & 0x0f))
        if case .success(let option) = NBDOption.parse(code: code, data: stream) {
            let encoded = option.encoded()
            guard encoded.count >= NBD.optionHeaderSize else { trap("short option encoding") }
            let again = NBDOption.parse(code: option.code, data: Array(encoded.dropFirst(NBD.optionHeaderSize)))
            if again != .success(option) { trap("option round trip") }
        }
        // The request header decoder, with a round trip.
        if let request = try? NBDRequest.decodeHeader(stream) {
            if request.encodedHeader() != Array(stream.prefix(NBDRequest.headerSize)) { trap("request round trip") }
            for export in catalog.sorted {
                let session = NBDSession(
                    export: export, clientFlags: [], blockSizes: small ? smallSizes : .standard,
                    clientHonoursBlockSizes: true, streamOffset: 0)
                check(session.validate(request), request, session)
            }
        }
        // Client-side decoders must not trap either.
        _ = try? NBDOptionReply.decode(stream)
        _ = try? NBDInfo.decode(stream)
        _ = try? NBDSimpleReply.decode(stream)
        _ = try? NBDGreeting.decode(stream)
        _ = try? NBDExportNameReply.decode(stream, noZeroes: selector & 1 != 0)
    }

    /// Everything a fuzzed server said and decided, for comparing two runs.
    struct Transcript: Equatable {
        var output: [UInt8] = []
        var requests: [NBDRequest] = []
        var verdicts: [NBDVerdict] = []
        var end: End = .inputExhausted

        enum End: Equatable {
            case inputExhausted
            case aborted
            case disconnected
            case violation(NBDProtocolError)
        }
    }

    static func replay(_ stream: [UInt8], chunk: Int, small: Bool) -> Transcript {
        var transcript = Transcript()
        let sizes = small ? smallSizes : NBDBlockSizes.standard
        var handshake = NBDHandshake(
            configuration: .init(blockSizes: sizes, maximumOptionData: 512, maximumOptionSkip: 2048, maximumOptions: 32))
        transcript.output = handshake.greeting
        var session: NBDSession?
        var decoder: NBDRequestDecoder?
        var buffer: [UInt8] = []
        var position = 0
        while true {
            // Process everything buffered.
            while true {
                if var current = decoder, let session {
                    let next: (consumed: Int, event: NBDRequestDecoder.Event)?
                    do {
                        next = try current.decode(buffer)
                    } catch {
                        transcript.end = .violation(error)
                        return transcript
                    }
                    decoder = current
                    guard let (consumed, event) = next else { break }
                    if consumed > buffer.count { trap("decoder consumed more than it was given") }
                    buffer.removeFirst(consumed)
                    switch event {
                    case .dropped:
                        continue
                    case .request(let request):
                        if consumed != NBDRequest.headerSize + request.payloadLength { trap("request framing") }
                        let verdict = session.validate(request)
                        check(verdict, request, session)
                        transcript.requests.append(request)
                        transcript.verdicts.append(verdict)
                        if verdict == .perform(.disconnect) {
                            transcript.end = .disconnected
                            return transcript
                        }
                    case .oversizedWrite(let request):
                        let verdict = session.validate(request)
                        guard case .reject = verdict else { trap("an oversized write was accepted") }
                        transcript.requests.append(request)
                        transcript.verdicts.append(verdict)
                    }
                } else {
                    let step = handshake.receive(buffer, catalog: catalog)
                    if step.consumed > buffer.count { trap("handshake consumed more than it was given") }
                    if step.consumed == 0, step.outcome == nil, !step.output.isEmpty { trap("output without progress") }
                    buffer.removeFirst(step.consumed)
                    transcript.output += step.output
                    switch step.outcome {
                    case .transmission(let agreed):
                        if agreed.streamOffset != UInt64(position - buffer.count) { trap("stream offset") }
                        session = agreed
                        decoder = NBDRequestDecoder(session: agreed, maximumDiscard: Int(sizes.maximum) * 2)
                    case .aborted:
                        transcript.end = .aborted
                        return transcript
                    case .violation(let error):
                        transcript.end = .violation(error)
                        return transcript
                    case nil:
                        break
                    }
                    if step.needsMoreInput { break }
                }
            }
            guard position < stream.count else { return transcript }
            let end = min(stream.count, position + chunk)
            buffer += stream[position..<end]
            position = end
        }
    }

    /// A performed command must lie inside the export and match its request.
    static func check(_ verdict: NBDVerdict, _ request: NBDRequest, _ session: NBDSession) {
        guard case .perform(let command) = verdict else { return }
        let size = session.export.size
        let range: (offset: UInt64, length: Int)?
        switch command {
        case .read(let offset, let length), .write(let offset, let length, _), .trim(let offset, let length, _),
            .writeZeroes(let offset, let length, _, _):
            range = (offset, length)
        case .flush, .disconnect:
            range = nil
        }
        guard let (offset, length) = range else { return }
        if offset != request.offset || length != Int(request.length) { trap("command does not match its request") }
        if length <= 0 || offset > size || UInt64(length) > size - offset { trap("command outside the export") }
        if session.export.capabilities.contains(.readOnly), request.type != .read { trap("write to a read-only export") }
        if length > Int(session.blockSizes.maximum), request.type == .read || request.type == .write {
            trap("payload over the maximum")
        }
    }

    static func trap(_ message: StaticString) -> Never { fatalError("\(message)") }
}
