import NIOCore
import Testing

@testable import QMP

/// Runs `QMPFrameDecoder` the way `ByteToMessageHandler` does, via NIOCore's
/// `NIOSingleStepByteToMessageProcessor` (NIOEmbedded/NIOTestUtils are not dependencies).
private func decode(
    chunks: [[UInt8]], maximumLineLength: Int = QMPFrameDecoder.defaultMaximumLineLength
) throws -> [String] {
    let processor = NIOSingleStepByteToMessageProcessor(QMPFrameDecoder(maximumLineLength: maximumLineLength))
    var lines: [String] = []
    for chunk in chunks {
        try processor.process(buffer: ByteBuffer(bytes: chunk)) { lines.append(String(buffer: $0)) }
    }
    try processor.finishProcessing(seenEOF: true) { lines.append(String(buffer: $0)) }
    return lines
}

/// Splits `bytes` into random-sized chunks (1...maxChunk), reproducibly.
private func randomChunks(_ bytes: [UInt8], seed: UInt64, maxChunk: Int) -> [[UInt8]] {
    var generator = SplitMix64(seed: seed)
    var chunks: [[UInt8]] = []
    var index = 0
    while index < bytes.count {
        let size = Int.random(in: 1...maxChunk, using: &generator)
        chunks.append(Array(bytes[index..<min(bytes.count, index + size)]))
        index += size
    }
    return chunks
}

private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("QMPFrameDecoder")
struct QMPFrameDecoderTests {
    static let messages = [
        #"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#,
        #"{"return": {}, "id": 1}"#,
        #"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#,
        "",
        #"{"return": {"status": "prelaunch", "running": false}, "id": 2}"#,
    ]

    @Test("CRLF and LF terminators, several messages in one read")
    func terminators() throws {
        let crlf = Array(Self.messages.map { $0 + "\r\n" }.joined().utf8)
        let lf = Array(Self.messages.map { $0 + "\n" }.joined().utf8)
        #expect(try decode(chunks: [crlf]) == Self.messages)
        #expect(try decode(chunks: [lf]) == Self.messages)
        let mixed = Array((Self.messages[0] + "\n" + Self.messages[1] + "\r\n" + Self.messages[2] + "\n").utf8)
        #expect(try decode(chunks: [mixed]) == Array(Self.messages[0...2]))
    }

    @Test("byte-by-byte drip feed")
    func dripFeed() throws {
        let bytes = Array(Self.messages.map { $0 + "\r\n" }.joined().utf8)
        #expect(try decode(chunks: bytes.map { [$0] }) == Self.messages)
    }

    @Test("random chunking, including CR and LF split across reads", arguments: 0..<50)
    func randomChunking(seed: UInt64) throws {
        let bytes = Array(Self.messages.map { $0 + "\r\n" }.joined().utf8)
        #expect(try decode(chunks: randomChunks(bytes, seed: seed, maxChunk: 17)) == Self.messages)
    }

    @Test("an unterminated tail at EOF is dropped")
    func truncatedTail() throws {
        #expect(try decode(chunks: [Array(#"{"return": {}, "id": 1}"#.utf8) + [13, 10] + Array(#"{"retu"#.utf8)]) == [
            #"{"return": {}, "id": 1}"#
        ])
    }

    @Test("a line exactly at the limit is accepted, with CRLF or LF, even drip-fed")
    func atLimit() throws {
        let line = String(repeating: "x", count: 64)
        let bytes = Array((line + "\r\n" + line + "\n").utf8)
        #expect(try decode(chunks: [bytes], maximumLineLength: 64) == [line, line])
        #expect(try decode(chunks: bytes.map { [$0] }, maximumLineLength: 64) == [line, line])
    }

    @Test("an over-long line is rejected with a typed error")
    func overLong() throws {
        let line = Array(String(repeating: "x", count: 65).utf8)
        #expect(throws: QMPError.lineTooLong(limit: 64)) {
            try decode(chunks: [line + [10]], maximumLineLength: 64)
        }
        #expect(throws: QMPError.lineTooLong(limit: 64)) {
            try decode(chunks: [line + [13, 10]], maximumLineLength: 64)
        }
    }

    @Test("an over-long line is rejected before its terminator arrives")
    func overLongWithoutTerminator() throws {
        let processor = NIOSingleStepByteToMessageProcessor(QMPFrameDecoder(maximumLineLength: 64))
        var lines = 0
        try processor.process(buffer: ByteBuffer(repeating: UInt8(ascii: "x"), count: 65)) { _ in lines += 1 }
        #expect(throws: QMPError.lineTooLong(limit: 64)) {
            try processor.process(buffer: ByteBuffer(repeating: UInt8(ascii: "x"), count: 1)) { _ in lines += 1 }
        }
        #expect(lines == 0)
    }

    @Test("default limit is 10 MiB")
    func defaultLimit() {
        #expect(QMPFrameDecoder().maximumLineLength == 10 * 1024 * 1024)
    }
}
