import Foundation
import Testing

@testable import QMP

@Suite("JSONValue")
struct JSONValueTests {
    @Test("parses every kind, keeping large integers exact")
    func parse() throws {
        let text = #"""
            {"n": null, "t": true, "f": false, "big": 9007199254740993, "neg": -5, "pi": 3.25,
             "s": "h\u00e9", "a": [1, "two", [3]], "o": {"k": {}}}
            """#
        let value = try JSONValue(parsing: Array(text.utf8))
        #expect(value["n"] == .null)
        #expect(value["n"]?.isNull == true)
        #expect(value["t"]?.boolValue == true)
        #expect(value["f"] == false)
        #expect(value["big"] == .int(9_007_199_254_740_993))
        #expect(value["big"]?.int64Value == 9_007_199_254_740_993)
        #expect(value["neg"]?.intValue == -5)
        #expect(value["pi"] == .double(3.25))
        #expect(value["pi"]?.intValue == nil)
        #expect(value["s"]?.stringValue == "hé")
        #expect(value["a"]?[1]?.stringValue == "two")
        #expect(value["a"]?[2]?[0]?.intValue == 1 + 2)
        #expect(value["a"]?[9] == nil)
        #expect(value["o"]?["k"]?.objectValue?.isEmpty == true)
        #expect(value["missing"] == nil)
        #expect(value["s"]?.intValue == nil)
    }

    @Test("encodes and re-parses to the same value")
    func roundTrip() throws {
        let value: JSONValue = [
            "execute": "blockdev-add", "id": 7,
            "arguments": ["size": .int(Int64.max), "ratio": 0.5, "flags": [true, nil]],
        ]
        let reparsed = try JSONValue(parsing: try value.serialized())
        #expect(reparsed == value)
        #expect(value.description.contains(#""size":9223372036854775807"#))
    }

    @Test("Encodable and Decodable conversions")
    func codable() throws {
        struct Arguments: Codable, Equatable {
            var device: String
            var bytes: Int64
        }
        let value = try JSONValue(encoding: Arguments(device: "drive0", bytes: 1 << 40))
        #expect(value == ["device": "drive0", "bytes": .int(1 << 40)])
        #expect(try value.decode(as: Arguments.self) == Arguments(device: "drive0", bytes: 1 << 40))
    }
}

@Suite("JSON parser")
struct JSONParserTests {
    @Test("escapes, surrogate pairs and numbers")
    func valid() throws {
        let value = try JSONValue(parsing: Array(#"["a\"b\\c\/d\n\t\u0041\u00e9\ud83d\ude00", -0, 0.5, -1.5e3, 1E2, 18446744073709551616, -9223372036854775808]"#.utf8))
        #expect(value[0]?.stringValue == "a\"b\\c/d\n\tAé😀")
        #expect(value[1] == .int(0))
        #expect(value[2] == .double(0.5))
        #expect(value[3] == .double(-1500))
        #expect(value[4] == .double(100))
        #expect(value[5] == .double(18_446_744_073_709_551_616))
        #expect(value[6] == .int(Int64.min))
        let text: JSONValue = "quote\" back\\ ctl\u{01} nl\n é"
        #expect(try JSONValue(parsing: try text.serialized()) == text)
    }

    @Test("rejects invalid JSON", arguments: [
        "", "{", "[1,]", "{\"a\" 1}", "{a: 1}", "01", "1.", "-", "1e", "tru", "nul", "\"abc", "\"\\x\"",
        "\"\\ud800\"", "\"a\u{01}b\"", "[1] 2", "{\"a\":1,}", "'single'",
    ])
    func invalid(text: String) {
        #expect(throws: (any Error).self) { try JSONValue(parsing: Array(text.utf8)) }
    }

    @Test("limits nesting depth")
    func depth() throws {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: (any Error).self) { try JSONValue(parsing: Array(deep.utf8)) }
        let fine = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(try JSONValue(parsing: Array(fine.utf8))[0] != nil)
    }

    @Test("non-finite doubles cannot be serialized")
    func nonFinite() {
        #expect(throws: (any Error).self) { try JSONValue.double(.infinity).serialized() }
    }
}
