// Throughput of MigrationStreamParser, built -O by scripts/bench-stream
// together with Sources/MigrationStream. Not a test: it prints figures.
// Usage: bench-stream [STREAM_FILE]  (a file: parsed as well, 1 MiB reads)

#if canImport(Glibc)
import Glibc
#endif

struct Counting: MigrationStreamSink {
    var verbatimBytes = 0
    var pages = 0
    var checksum: UInt64 = 0
    mutating func verbatim(_ bytes: UnsafeRawBufferPointer, region: MigrationStream.Region) { verbatimBytes += bytes.count }
    mutating func blocks(_ blocks: [MigrationStream.Block]) {}
    mutating func page(block: Int, offset: UInt64, content: MigrationStream.PageContent) {
        pages += 1
        if case .data(let bytes) = content { checksum &+= UInt64(bytes[0]) &+ UInt64(bytes[4095]) }
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func measure(_ label: String, _ stream: UnsafeRawBufferPointer, chunk: Int, rounds: Int) {
    var best = Double.infinity
    var sink = Counting()
    for _ in 0..<rounds {
        var parser = MigrationStreamParser(pageSize: 4096)
        sink = Counting()
        let start = now()
        var at = 0
        do {
            while at < stream.count {
                let end = min(stream.count, at + chunk)
                try parser.consume(UnsafeRawBufferPointer(rebasing: stream[at..<end]), into: &sink)
                at = end
            }
            try parser.finish()
        } catch {
            print("\(label): refused: \(error)")
            return
        }
        best = min(best, now() - start)
    }
    let mbps = Double(stream.count) / best / 1e6
    print("\(label): \(stream.count) bytes, \(sink.pages) page records, chunks of \(chunk): \(Int(mbps)) MB/s (best of \(rounds))")
}

@main
enum Bench {
    static func main() {
        // 256 MiB of RAM, every page sent once (3 in 4 data, 1 in 4 zero), one PART section.
        let blockLength: UInt64 = 256 << 20
        var b = MigrationStreamBuilder(pageSize: 4096)
        b.header()
        b.configuration()
        b.ramStart(id: 1, blocks: [.init(name: "pc.ram", length: blockLength)])
        b.section(MigrationStream.SectionType.part, id: 1)
        b.bytes.reserveCapacity(Int(blockLength) + (1 << 20))
        var data = [UInt8](repeating: 0, count: 4096)
        for page in 0..<Int(blockLength / 4096) {
            data[0] = UInt8(truncatingIfNeeded: page)
            b.page(block: "pc.ram", offset: UInt64(page) * 4096, data: page % 4 == 3 ? nil : data)
        }
        b.endSection(id: 1)
        b.command(MigrationStream.Command.switchoverStart)
        b.section(MigrationStream.SectionType.end, id: 1)
        b.endSection(id: 1)
        b.tail()
        b.bytes.withUnsafeBytes { stream in
            measure("synthetic", stream, chunk: 1 << 20, rounds: 3)
            measure("synthetic", stream, chunk: 65_537, rounds: 3)
            measure("synthetic", stream, chunk: 4_093, rounds: 3)
        }
        if CommandLine.arguments.count > 1 {
            let path = CommandLine.arguments[1]
            guard let file = fopen(path, "rb") else { print("cannot open \(path)"); return }
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let n = fread(&buffer, 1, buffer.count, file)
                if n <= 0 { break }
                bytes += buffer[0..<n]
            }
            fclose(file)
            bytes.withUnsafeBytes { measure(path, $0, chunk: 1 << 20, rounds: 3) }
        }
    }
}
