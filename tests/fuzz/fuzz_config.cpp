// Fuzzes the run config: a YAML file plus dotted overrides (load_config). The input is the YAML text, then
// optionally a NUL byte and one override ("section.key=value") per line.
// Property: an accepted config survives config_to_yaml -> load_config and config_to_json -> config_from_json
// unchanged (checkpoints and the run directory's config.yaml rely on both).
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "trainers/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace natsl;
  const std::string input(reinterpret_cast<const char*>(data), size);
  // `model: FILE` may name any file; special files (an endless /dev/zero) test the OS, not the parser.
  for (const char* special : {"/dev", "/proc", "/sys"})
    if (input.find(special) != std::string::npos) return 0;
  const size_t nul = input.find('\0');
  const std::string yaml = input.substr(0, nul);
  std::vector<std::string> overrides;
  if (nul != std::string::npos) {
    std::string rest = input.substr(nul + 1);
    for (size_t start = 0; start <= rest.size();) {
      size_t end = rest.find('\n', start);
      if (end == std::string::npos) end = rest.size();
      overrides.push_back(rest.substr(start, end - start));
      start = end + 1;
    }
  }
  static const std::string path = fuzz::put_file("config.yaml", "");
  fuzz::put_file("config.yaml", yaml);
  RunConfig cfg;
  try {
    cfg = load_config(path, overrides);
  } catch (const InputError&) {
    return 0;
  }
  const nlohmann::json j = config_to_json(cfg);
  config_table(cfg);
  if (config_to_json(config_from_json(j, "fuzz")) != j) fuzz::broken("config_from_json(config_to_json(c)) != c");
  static const std::string again = fuzz::put_file("again.yaml", "");
  fuzz::put_file("again.yaml", config_to_yaml(cfg));
  try {
    if (config_to_json(load_config(again)) != j) fuzz::broken("load_config(config_to_yaml(c)) != c");
  } catch (const InputError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    fuzz::broken("config_to_yaml wrote a config that load_config refuses");
  }
  return 0;
}
