import NIOCore

/// What a port's decoder passes on: a whole frame, or the length of one
/// over the limit that it skipped without buffering.
enum PortInput {
    case frame([UInt8])
    case refused(length: Int)
}

/// QEMU's `-netdev stream` framing: a 4-byte big-endian length, then the
/// frame. A length over `maximumFrameBytes` is reported and its bytes
/// skipped as they arrive, so a hostile peer cannot make the switch buffer
/// up to 4 GiB.
struct StreamFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = PortInput

    let maximumFrameBytes: Int
    private var skipping = 0

    init(maximumFrameBytes: Int) { self.maximumFrameBytes = maximumFrameBytes }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if skipping > 0 {
            let n = min(skipping, buffer.readableBytes)
            buffer.moveReaderIndex(forwardBy: n)
            skipping -= n
            return skipping == 0 ? .continue : .needMoreData
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .big, as: UInt32.self) else { return .needMoreData }
        if Int(length) > maximumFrameBytes {
            buffer.moveReaderIndex(forwardBy: 4)
            skipping = Int(length)
            context.fireChannelRead(wrapInboundOut(.refused(length: Int(length))))
            return .continue
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        guard let bytes = buffer.readBytes(length: Int(length)) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(.frame(bytes)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        // A partial frame at the end is dropped with the connection.
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }
}
