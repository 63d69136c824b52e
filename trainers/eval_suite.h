#pragma once
// `natsl eval`'s evaluations beyond the config's own held-out data (docs/training.md, "Evaluation"):
//   MQAR answer accuracy over a grid of key-value pair counts x sequence lengths;
//   single-needle NIAH accuracy over a grid of sequence lengths x needle depths (generated haystacks);
//   multiple-choice log-likelihood scoring of a local JSONL file in lm-evaluation-harness's request shape:
//     {"context": "...", "continuations": [" a", " b", ...], "label": 1}      (label optional)
//   -> per request, per continuation: the summed log-likelihood of its tokens after the context and whether
//   each of them is the greedy (argmax) choice; accuracy by log-likelihood and by log-likelihood per byte.
// Synthetic data comes from the task generators under the config's evaluation seed, so it is never the
// training data, and the same points give the same numbers every time.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace natsl {

class Trainer;

struct EvalSuite {
  std::vector<int64_t> mqar_pairs, mqar_lengths;  // both set: the MQAR grid
  std::vector<int64_t> niah_lengths;              // set: the NIAH grid, at niah_depths (percent)
  std::vector<double> niah_depths = {0, 25, 50, 75, 100};
  std::string choices;                            // a JSONL file of multiple-choice requests
  std::string routing_map;                        // a text file: every NAtS-L layer's routing of it
  std::vector<std::string> logits;                // {TEXT, OUT}: the text's tokens and logits to OUT (safetensors)
  int64_t batches = 4;                            // batches per synthetic grid point
  bool per_request = false;                       // multiple choice: keep every request's scores
};

// Runs the suite on the trainer's model (its weights as loaded) and returns {"mqar": [...], "niah": [...],
// "choices": {...}, "routing_map": {...}, "logits": {...}}. Logits: the text's tokens (BOS first) through the
// model in evaluation mode; OUT.safetensors holds "tokens" (i32 [T]) and "logits" (f32 [T, vocab]). The routing map: the text's bytes (BOS first) through the model in
// evaluation mode, and for each NAtS-L layer its labels [chunk][router head] (1 = softmax, 0 = GDN). Bad inputs (a grid point the generator refuses, a malformed request line) are an
// InputError naming the point or file:line. Progress lines go to `progress` (nullptr: none).
nlohmann::json run_eval_suite(Trainer& trainer, const EvalSuite& suite, FILE* progress);

}  // namespace natsl
