/// Splits the transmission phase's byte stream into requests, as a value.
///
/// Framing rule: only `NBD_CMD_WRITE` carries data, and its `length` field
/// always frames it, whatever else is wrong with the request. So:
///
/// - a WRITE with `length` ≤ `maximumPayload` is returned with its data once
///   all of it is buffered (even if it will be refused: read-only export,
///   out of bounds, bad flags), so the next header is found where it is;
/// - a WRITE with `maximumPayload` < `length` ≤ `maximumDiscard` has its
///   data dropped as it arrives (never buffered; `.dropped` events), then is
///   returned as `.oversizedWrite` to be answered `NBD_EINVAL`;
/// - a WRITE with `length` > `maximumDiscard`, or any header with a bad
///   magic, throws: no client that follows the spec sends it, and skipping
///   gigabytes to stay in step is not worth it. The connection must close.
///
/// Any other command is taken as header only; an unknown command that a
/// client sent with data desynchronises the stream, which then fails on the
/// next magic check.
public struct NBDRequestDecoder: Sendable {
    /// Largest WRITE payload buffered (the advertised maximum payload).
    public let maximumPayload: Int
    /// Largest oversized WRITE payload skipped before giving up on the stream.
    public let maximumDiscard: Int
    /// Bytes consumed since the start of the connection.
    public private(set) var streamOffset: UInt64

    private var dropping: (request: NBDRequest, remaining: Int)?

    /// What `decode` found at the front of its input.
    public enum Event: Sendable, Hashable {
        /// A request. For a WRITE the `request.length` bytes of data are the
        /// last ones of the consumed range (right after the header).
        case request(NBDRequest)
        /// Bytes of an oversized WRITE (its header, then its data) were thrown away.
        case dropped(Int)
        /// The oversized WRITE's data is gone; answer the request (validation
        /// refuses it).
        case oversizedWrite(NBDRequest)
    }

    public init(maximumPayload: Int, maximumDiscard: Int = 64 << 20, streamOffset: UInt64 = 0) {
        self.maximumPayload = maximumPayload
        self.maximumDiscard = max(maximumDiscard, maximumPayload)
        self.streamOffset = streamOffset
    }

    /// A decoder for the transmission phase of `session`.
    public init(session: NBDSession, maximumDiscard: Int = 64 << 20) {
        self.init(
            maximumPayload: Int(session.blockSizes.maximum), maximumDiscard: maximumDiscard,
            streamOffset: session.streamOffset)
    }

    /// True while an oversized WRITE's data is being dropped.
    public var isDropping: Bool { dropping != nil }

    /// Looks at the front of `bytes` (everything buffered and not yet
    /// consumed). Nil when more bytes are needed; otherwise the number of
    /// bytes to drop from the front and what they were.
    public mutating func decode(_ bytes: some RandomAccessCollection<UInt8>) throws(NBDProtocolError)
        -> (consumed: Int, event: Event)?
    {
        if let (request, remaining) = dropping {
            if remaining == 0 {
                dropping = nil
                return (0, .oversizedWrite(request))
            }
            guard !bytes.isEmpty else { return nil }
            let count = min(remaining, bytes.count)
            dropping = (request, remaining - count)
            streamOffset += UInt64(count)
            return (count, .dropped(count))
        }
        guard bytes.count >= NBDRequest.headerSize else { return nil }
        let request = try NBDRequest.decodeHeader(bytes, atByte: streamOffset)
        guard request.type == .write else {
            streamOffset += UInt64(NBDRequest.headerSize)
            return (NBDRequest.headerSize, .request(request))
        }
        let length = Int(request.length)
        if length > maximumPayload {
            guard length <= maximumDiscard else {
                throw .writeTooLarge(length: request.length, limit: maximumDiscard, atByte: streamOffset)
            }
            let count = min(length, bytes.count - NBDRequest.headerSize)
            dropping = (request, length - count)
            streamOffset += UInt64(NBDRequest.headerSize + count)
            return (NBDRequest.headerSize + count, .dropped(NBDRequest.headerSize + count))
        }
        guard bytes.count >= NBDRequest.headerSize + length else { return nil }
        streamOffset += UInt64(NBDRequest.headerSize + length)
        return (NBDRequest.headerSize + length, .request(request))
    }
}
