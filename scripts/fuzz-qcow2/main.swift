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
