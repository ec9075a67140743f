#if canImport(Glibc)
import Glibc
#endif

/// The body of the libFuzzer target (scripts/fuzz) and of the regression
/// tests that replay its findings: parse a header from arbitrary bytes, then
/// open the same bytes as an image and walk, read and write its tables.
/// Any thrown `QCOW2Error` is an accepted outcome; a trap is a finding.
public enum QCOW2Fuzz {
    /// Runs one input. `scratchPath` is a file the function may overwrite.
    public static func exercise(_ bytes: [UInt8], scratchPath: String) {
        // Pure parsing first.
        _ = try? QCOW2Header.parse(bytes, fileSize: UInt64(bytes.count))
        for order in 0...6 where !bytes.isEmpty {
            let decoded = QCOW2Entries.decodeRefcounts(bytes, order: UInt32(order))
            let whole = decoded.count * (1 << order) / 8
            if QCOW2Entries.encodeRefcounts(decoded, order: UInt32(order)) != Array(bytes.prefix(whole)) { trap("refcount round trip") }
        }
        if bytes.count >= 8 {
            let entry = readBE64(bytes, 0)
            _ = try? QCOW2Entries.decodeL2(entry, version: 3, clusterSize: 512, index: 0, tableOffset: 0)
            _ = try? QCOW2Entries.l2TableOffset(l1Entry: entry, index: 0, tableOffset: 0, clusterSize: 512)
        }
        // Then the tables, through the engine, on a file holding the bytes.
        let fd = open(scratchPath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        close(fd)
        guard let image = try? QCOW2Image.open(path: scratchPath, writable: true, backing: .none) else {
            _ = try? QCOW2Image.open(path: scratchPath, writable: false, backing: .none)
            return
        }
        var g: UInt64 = 0
        for _ in 0..<64 {
            guard let next = try? image.nextAllocatedCluster(atOrAfter: g) else { break }
            _ = try? image.read(at: next * image.clusterSize, count: 512)
            g = next + 1
        }
        _ = try? image.read(at: 0, count: 4096)
        _ = try? image.write([1, 2, 3], at: 1000)
        _ = try? image.discard(at: 0, count: image.clusterSize * 2)
        _ = try? image.writeZeroes(at: 0, count: min(image.virtualSize, image.clusterSize * 3))
        _ = try? image.flush()
    }

    static func trap(_ message: StaticString) -> Never { fatalError("\(message)") }
}
