#pragma once
// CRC-32 as zlib, PNG and Python's zlib.crc32 compute it: reflected polynomial 0xEDB88320, initial value
// and final xor 0xFFFFFFFF. crc32_update(crc32_update(0, a), b) == crc32 of a followed by b.
#include <cstddef>
#include <cstdint>

namespace natsl {

uint32_t crc32_update(uint32_t crc, const void* data, size_t nbytes);

}  // namespace natsl
