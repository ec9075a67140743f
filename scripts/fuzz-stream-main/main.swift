// libFuzzer entry for the migration stream parser and rebuilder; built by
// scripts/fuzz-stream together with Sources/MigrationStream into one module.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    MigrationStreamFuzz.exercise(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
