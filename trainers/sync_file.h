#pragma once
// Moved to data/sync_file.h so that data/ (`natsl tokenize`'s manifest and progress file) can use it too.
#include "data/sync_file.h"
