#pragma once
// ConfigKeyError: an InputError about one option, named by its key. Each owner of options (the model, the
// data, the training loop, a generator's options struct) checks its own and throws this; only the config
// loader knows where each key was set, so it catches it and puts that place (FILE:LINE, "command line") in
// front of the message. Callers that hold no file (a config built in code) see a plain InputError.
#include <string>
#include <utility>

#include "core/error.h"

namespace natsl {

class ConfigKeyError : public InputError {
 public:
  // `key`: the dotted config key ("model.num_heads"), or the field name within an options struct that its
  // caller maps to a key (MqarOptions: "seq_len"). `message` names the key itself and says what to do.
  ConfigKeyError(std::string key, std::string message) : InputError(std::move(message)), key_(std::move(key)) {}
  const std::string& key() const { return key_; }

 private:
  std::string key_;
};

}  // namespace natsl
