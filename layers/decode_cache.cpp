#include "layers/decode_cache.h"

#include "layers/mixer.h"

namespace natsl {

int64_t held_bytes(const std::vector<Tensor>& ts) {
  int64_t n = 0;
  for (const Tensor& t : ts)
    if (t.defined()) n += int64_t(t.nbytes());
  return n;
}

std::unique_ptr<DecodeCache> Mixer::decode_cache() {
  throw InputError("this mixer kind has no decoding cache, so a model using it cannot generate token by token");
}

}  // namespace natsl
