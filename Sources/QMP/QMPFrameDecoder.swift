import NIOCore

/// Splits a QMP byte stream into lines, one JSON message per line.
///
/// QEMU terminates every message with CRLF; a bare LF is accepted too. Each
/// decoded value is the line without its terminator. A line whose content is
/// longer than ``maximumLineLength`` bytes fails decoding with
/// ``QMPError/lineTooLong(limit:)`` as soon as that is certain, so a peer can
/// never make the decoder buffer more than about `maximumLineLength` bytes.
///
/// Bytes after the last line terminator at end of stream are a truncated
/// message and are discarded.
public struct QMPFrameDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = ByteBuffer

    /// 10 MiB, the same cap as QEMU's Python client.
    public static let defaultMaximumLineLength = 10 * 1024 * 1024

    /// The longest line content (excluding CR/LF) accepted, in bytes.
    public let maximumLineLength: Int

    /// How many readable bytes were already searched for LF without finding one,
    /// so drip-fed input is scanned once, not quadratically.
    private var scannedBytes = 0

    public init(maximumLineLength: Int = QMPFrameDecoder.defaultMaximumLineLength) {
        precondition(maximumLineLength > 0, "maximumLineLength must be positive")
        self.maximumLineLength = maximumLineLength
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> ByteBuffer? {
        let view = buffer.readableBytesView
        let searchStart = view.index(view.startIndex, offsetBy: min(self.scannedBytes, view.count))
        guard let newline = view[searchStart...].firstIndex(of: UInt8(ascii: "\n")) else {
            self.scannedBytes = view.count
            // One byte of slack: the last byte may be the CR of a CRLF.
            if view.count > self.maximumLineLength + 1 {
                throw QMPError.lineTooLong(limit: self.maximumLineLength)
            }
            return nil
        }
        self.scannedBytes = 0
        let withTerminator = view.distance(from: view.startIndex, to: newline) + 1
        var contentLength = withTerminator - 1
        if contentLength > 0, view[view.index(before: newline)] == UInt8(ascii: "\r") {
            contentLength -= 1
        }
        guard contentLength <= self.maximumLineLength else {
            throw QMPError.lineTooLong(limit: self.maximumLineLength)
        }
        guard let line = buffer.readSlice(length: contentLength) else { return nil }
        buffer.moveReaderIndex(forwardBy: withTerminator - contentLength)
        return line
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ByteBuffer? {
        if let line = try self.decode(buffer: &buffer) {
            return line
        }
        // An unterminated tail is a truncated message: drop it.
        buffer.moveReaderIndex(to: buffer.writerIndex)
        self.scannedBytes = 0
        return nil
    }
}
