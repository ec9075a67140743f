/// The version of a QEMU binary, as `qemu-system-x86_64 --version` prints it
/// ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2…)").
public struct QEMUVersion: Sendable, Equatable, Comparable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public var micro: Int

    public init(major: Int, minor: Int, micro: Int = 0) {
        self.major = major
        self.minor = minor
        self.micro = micro
    }

    /// Parses the first line of `--version`; nil when it is not QEMU's.
    public init?(versionOutput text: String) {
        let marker = "QEMU emulator version "
        guard let range = text.range(of: marker) else { return nil }
        let numbers = text[range.upperBound...].prefix { $0.isNumber || $0 == "." }.split(separator: ".").compactMap { Int($0) }
        guard numbers.count >= 2 else { return nil }
        self.init(major: numbers[0], minor: numbers[1], micro: numbers.count > 2 ? numbers[2] : 0)
    }

    public var description: String { "\(major).\(minor).\(micro)" }

    public static func < (a: QEMUVersion, b: QEMUVersion) -> Bool {
        (a.major, a.minor, a.micro) < (b.major, b.minor, b.micro)
    }

    /// Runs `binary --version`.
    public static func of(binary: String = QEMUCommandLine.defaultBinary) async throws -> QEMUVersion {
        let output = try await Tool.check(binary, ["--version"], timeout: .seconds(20))
        guard let version = QEMUVersion(versionOutput: output.stdout) else {
            throw QEMUError.file("\(binary) --version printed no QEMU version: \(output.stdout.prefix(200))")
        }
        return version
    }

    /// The first QEMU whose TCG keeps migration dirty tracking coherent on
    /// its fast path (commit 03bfc2188f): see `QEMUCommandLine.ramPaddingKiB`.
    public static let tcgDirtyTrackingFixed = QEMUVersion(major: 9, minor: 0)
}

extension QEMUCommandLine {
    /// The RAM padding a new VM gets with this QEMU: `ramPaddingKiB` before
    /// 9.0, none from 9.0 on. There the padding would do harm: QEMU's
    /// page-by-page sync path, which the padding selects, resets the TCG
    /// TLB once per dirty page under the big lock, and the guest stalls for
    /// it at every pre-copy round (Docs/architecture.md, "Live migration
    /// under TCG"). An unknown version gets the padding: correct, if slower.
    public static func ramPaddingKiB(for version: QEMUVersion?) -> Int {
        guard let version, version >= QEMUVersion.tcgDirtyTrackingFixed else { return ramPaddingKiB }
        return 0
    }
}
