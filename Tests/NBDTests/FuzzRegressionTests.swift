import Testing

@testable import NBDProtocol

/// Inputs of the libFuzzer target (scripts/fuzz-nbd), replayed through the
/// same entry point, `NBDFuzz.exercise`. The seeds are the script's corpus
/// seeds; findings of the fuzzer are added here, each named after what it
/// exercises. (No run so far has found a crash.)
@Suite struct FuzzRegressionTests {
    static func hex(_ text: String) -> [UInt8] { CodecTests.hex(text) }
    static let magic = "25609513"

    /// Seed "go": GO with block-size and name requests, then every command and DISC.
    static let go = hex(
        """
        03 00000003 49484156454f5054 00000007 0000000e 00000004 6469736b 0002 0003 0001
        \(magic) 0000 0000 0000000000000001 0000000000000000 00000200
        \(magic) 0000 0001 0000000000000002 0000000000000200 00000004 61626364
        \(magic) 0000 0003 0000000000000003 0000000000000000 00000000
        \(magic) 0001 0004 0000000000000004 0000000000000000 00001000
        \(magic) 0002 0006 0000000000000005 0000000000001000 00001000
        \(magic) 0000 0002 0000000000000006 0000000000000000 00000000
        """)

    /// Seed "export-name": the read-only export under small limits: a read
    /// past the end, a refused write, an oversized write being skipped.
    static let exportName = hex(
        """
        80 00000001 49484156454f5054 00000001 00000002 726f
        \(magic) 0000 0000 0000000000000001 000000000000fe00 00000400
        \(magic) 0000 0001 0000000000000002 0000000000000000 00000002 abab
        \(magic) 0000 0001 0000000000000003 0000000000000000 00003000 0102030405060708
        \(magic) 0000 0000 0000000000000004 0000000000000000 00000200
        """)

    /// Seed "options": LIST, an unknown option, INFO of a missing export,
    /// STRUCTURED_REPLY, ABORT.
    static let options = hex(
        """
        01 00000002 49484156454f5054 00000003 00000000
        49484156454f5054 00000099 00000003 010203
        49484156454f5054 00000006 0000000a 00000004 6e6f7065 0000
        49484156454f5054 00000008 00000000
        49484156454f5054 00000002 00000000
        """)

    @Test func seedGoReachesEveryCommandAndDisconnects() {
        NBDFuzz.exercise(Self.go)
        let transcript = NBDFuzz.replay(Array(Self.go.dropFirst()), chunk: 4, small: false)
        #expect(transcript.end == .disconnected)
        #expect(transcript.verdicts == [
            .perform(.read(offset: 0, length: 512)),
            .perform(.write(offset: 512, length: 4, fua: false)),
            .perform(.flush),
            .perform(.trim(offset: 0, length: 4096, fua: true)),
            .perform(.writeZeroes(offset: 4096, length: 4096, fua: false, mayTrim: false)),
            .perform(.disconnect),
        ])
    }

    @Test func seedExportNameRefusesAndSkipsWithoutLosingTheStream() {
        NBDFuzz.exercise(Self.exportName)
        let transcript = NBDFuzz.replay(Array(Self.exportName.dropFirst()), chunk: 3, small: true)
        // Input ends inside the skipped payload: the last read is never reached.
        #expect(transcript.end == .inputExhausted)
        #expect(transcript.verdicts.map(\.errno) == [.invalid, .notPermitted])
    }

    @Test func seedOptionsAnswersEveryOptionThenAborts() {
        NBDFuzz.exercise(Self.options)
        let transcript = NBDFuzz.replay(Array(Self.options.dropFirst()), chunk: 1, small: false)
        #expect(transcript.end == .aborted)
    }

    /// Random inputs (seeded, so replayable) around the seeds: the checks
    /// inside `exercise` must hold for each.
    @Test func mutatedSeedsKeepTheInvariants() {
        var random = SplitMix(seed: 0x6e62_6421)
        for seed in [Self.go, Self.exportName, Self.options] {
            for _ in 0..<300 {
                var input = seed
                for _ in 0..<Int(random.next() % 4 + 1) {
                    let position = Int(random.next() % UInt64(input.count))
                    input[position] = UInt8(truncatingIfNeeded: random.next())
                }
                NBDFuzz.exercise(input)
            }
        }
    }

    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }
}
