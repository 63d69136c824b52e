// Fuzzes SafeTensorsReader (checkpoint weights and optimizer moments): any bytes either open and read back
// every tensor with the bytes the header promised, or are refused with an InputError.
#include "core/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "trainers/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace natsl;
  static fuzz::MemFile file;
  try {
    SafeTensorsReader r(file.set(data, size));
    for (const SafeTensorEntry& e : r.entries()) {
      Tensor t = r.read(e.name);
      if (uint64_t(t.nbytes()) != e.end - e.begin) fuzz::broken("tensor bytes differ from its data_offsets span");
      if (e.end > size) fuzz::broken("a tensor spans past the end of the file");
    }
  } catch (const InputError&) {
  }
  return 0;
}
