// libFuzzer entry for qcow2 header and table parsing; built by scripts/fuzz
// together with Sources/QCOW2 into one module.
#if canImport(Glibc)
import Glibc
#endif

nonisolated(unsafe) var scratchPath: String = {
    let dir = getenv("QCOW2_FUZZ_SCRATCH").map { String(cString: $0) } ?? "/tmp"
    return "\(dir)/qcow2-fuzz-\(getpid()).img"
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    QCOW2Fuzz.exercise(bytes, scratchPath: scratchPath)
    return 0
}

/// Half of the mutations are libFuzzer's own byte-level ones; the other
/// half set one to three header fields, extension lengths or first table
/// entries to boundary values (QCOW2Fuzz.mutateField), sometimes followed
/// by a byte-level mutation. The size is kept.
@_cdecl("LLVMFuzzerCustomMutator")
public func customMutator(_ data: UnsafeMutablePointer<UInt8>, _ size: Int, _ maxSize: Int, _ seed: UInt32) -> Int {
    var state = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 | 1
    func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
    guard size >= Int(QCOW2Header.Limits.v3MinHeaderLength), next() % 2 == 0 else {
        return LLVMFuzzerMutate(data, size, maxSize)
    }
    var bytes = Array(UnsafeBufferPointer(start: data, count: size))
    for _ in 0...(next() % 3) { QCOW2Fuzz.mutateField(&bytes, choice: next()) }
    for i in 0..<size { data[i] = bytes[i] }
    return next() % 4 == 0 ? LLVMFuzzerMutate(data, size, maxSize) : size
}
