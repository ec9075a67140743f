import CEVMSystem
import Testing

@Suite struct CPUSetTests {
    @Test(arguments: [
        ("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-1,3", [0, 1, 3]), (" 5,1 ", [1, 5]), ("2,2,1-2", [1, 2]),
    ])
    func parses(text: String, cpus: [Int]) throws {
        #expect(try CPUSet(parsing: text).cpus == cpus)
    }

    @Test(arguments: ["", "a", "3-1", "1-", "-1", "1,,2", "1-2-3", "0x1", "+1"])
    func rejectsMalformed(text: String) {
        #expect(throws: CPUSet.ParseError.self) { try CPUSet(parsing: text) }
    }

    @Test func rejectsOutOfRange() {
        #expect(throws: CPUSet.ParseError.outOfRange(4096)) { try CPUSet(parsing: "0-4096") }
    }

    @Test func printsRangesCompactly() throws {
        #expect(CPUSet([0, 1, 2, 5, 7, 8]).description == "0-2,5,7-8")
        #expect(try CPUSet(parsing: CPUSet([3, 4, 9]).description) == CPUSet([3, 4, 9]))
    }

    @Test func errorNamesTheBadElement() {
        do {
            _ = try CPUSet(parsing: "0,x-2")
            Issue.record("accepted a malformed list")
        } catch {
            #expect(error.description.contains("'x-2'"))
        }
    }
}
