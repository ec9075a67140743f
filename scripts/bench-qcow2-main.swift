// Benchmark of the QCOW2 engine against qemu-img on the same files in the
// same run. Built and run by scripts/bench-qcow2; prints figures only.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

@discardableResult
func tool(_ args: [String]) -> Double {
    let start = now()
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    p.standardOutput = FileHandle.nullDevice
    do { try p.run() } catch { fatalError("cannot run \(args[0]): \(error)") }
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { fatalError("\(args.joined(separator: " ")) failed") }
    return now() - start
}

func report(_ name: String, bytes: Int, seconds: Double, qemu: Double? = nil) {
    let mib = Double(bytes) / 1048576
    var line = name.padding(toLength: 40, withPad: " ", startingAt: 0) + String(format: "%8.1f MiB/s", mib / seconds)
    if let qemu {
        line += String(format: "   qemu %8.1f MiB/s   engine/qemu %.2fx", mib / qemu, qemu / seconds)
    }
    print(line)
}

func run() throws {
    let dir = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : NSTemporaryDirectory()
    let size = 256 << 20
    let a = dir + "/bench-a.qcow2", t = dir + "/bench-t.qcow2", u = dir + "/bench-u.qcow2", q = dir + "/bench-q.qcow2"
    for f in [a, t, u, q] { unlink(f) }
    defer { for f in [a, t, u, q] { unlink(f) } }
    var rng = SystemRandomNumberGenerator()

    for block in [4096, 65536] {
        // Sequential write into a new image, flush included.
        unlink(a)
        let image = try QCOW2Image.create(path: a, virtualSize: UInt64(size))
        let buffer = [UInt8](repeating: 0x5a, count: block)
        var start = now()
        for off in stride(from: 0, to: size, by: block) { try image.write(buffer, at: UInt64(off)) }
        try image.flush()
        let engineSeqWrite = now() - start
        unlink(q)
        tool(["qemu-img", "create", "-q", "-f", "qcow2", q, "\(size)"])
        let qemuSeqWrite = tool(["qemu-img", "bench", "-q", "-w", "-f", "qcow2", "-t", "writeback", "-c", "\(size / block)", "-s", "\(block)", "-S", "\(block)", "-d", "1", q])
        report("sequential write \(block / 1024) KiB", bytes: size, seconds: engineSeqWrite, qemu: qemuSeqWrite)

        // Sequential read of the written image.
        var out = [UInt8](repeating: 0, count: block)
        start = now()
        for off in stride(from: 0, to: size, by: block) {
            try out.withUnsafeMutableBytes { try image.read(into: $0, at: UInt64(off)) }
        }
        let engineSeqRead = now() - start
        let qemuSeqRead = tool(["qemu-img", "bench", "-q", "-f", "qcow2", "-t", "writeback", "-c", "\(size / block)", "-s", "\(block)", "-S", "\(block)", "-d", "1", q])
        report("sequential read \(block / 1024) KiB", bytes: size, seconds: engineSeqRead, qemu: qemuSeqRead)

        // Random reads and writes over the allocated image (qemu-img bench
        // has no random mode: engine figures only).
        let count = block == 4096 ? 20000 : 4000
        start = now()
        for _ in 0..<count {
            let off = UInt64.random(in: 0..<UInt64(size / block), using: &rng) * UInt64(block)
            try out.withUnsafeMutableBytes { try image.read(into: $0, at: off) }
        }
        report("random read \(block / 1024) KiB", bytes: count * block, seconds: now() - start)
        start = now()
        for _ in 0..<count {
            let off = UInt64.random(in: 0..<UInt64(size / block), using: &rng) * UInt64(block)
            try image.write(buffer, at: off)
        }
        try image.flush()
        report("random write (allocated) \(block / 1024) KiB", bytes: count * block, seconds: now() - start)
    }

    // Cluster-by-cluster copy of one layer (T, half its clusters allocated by
    // QEMU) into a new overlay U, as the integration sweep does.
    unlink(t)
    tool(["qemu-img", "create", "-q", "-f", "qcow2", t, "\(size)"])
    var commands: [String] = []
    for i in stride(from: 0, to: size / 65536, by: 2) { commands += ["-c", "write -P \(i % 250 + 1) \(i * 65536) 64k"] }
    tool(["qemu-io", "-f", "qcow2"] + commands + [t])
    let source = try QCOW2Image.open(path: t)
    unlink(u)
    let start = now()
    let target = try QCOW2Image.create(path: u, virtualSize: source.virtualSize)
    var cluster = [UInt8](repeating: 0, count: Int(source.clusterSize))
    var g: UInt64 = 0
    var copied = 0
    while let next = try source.nextAllocatedCluster(atOrAfter: g) {
        try cluster.withUnsafeMutableBytes { try source.read(into: $0, at: next * source.clusterSize) }
        try cluster.withUnsafeBytes { try target.write($0, at: next * source.clusterSize) }
        copied += cluster.count
        g = next + 1
    }
    try target.flush()
    let engineCopy = now() - start
    unlink(q)
    let qemuCopy = tool(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", "-t", "writeback", t, q])
    report("cluster copy T -> U (64 KiB clusters)", bytes: copied, seconds: engineCopy, qemu: qemuCopy)
}

@main
struct BenchMain {
    static func main() {
        do { try run() } catch {
            print("bench failed: \(error)")
            exit(1)
        }
    }
}
