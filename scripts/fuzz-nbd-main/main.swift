// libFuzzer entry for the NBD option and request decoders; built by
// scripts/fuzz-nbd together with Sources/NBDProtocol into one module.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    NBDFuzz.exercise(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
