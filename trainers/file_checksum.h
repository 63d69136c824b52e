#pragma once
// Moved to data/file_checksum.h so that data/ (`natsl tokenize`'s manifest, tokenizer identities) can use it too.
#include "data/file_checksum.h"
