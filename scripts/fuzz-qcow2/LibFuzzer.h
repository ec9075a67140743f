// libFuzzer's own byte-level mutator, called by the custom mutator in
// main.swift. libFuzzer defines it (its FuzzerInterface.h declares it) but
// installs no header Swift could import, hence this declaration.
#include <stddef.h>
#include <stdint.h>

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
