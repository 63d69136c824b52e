#include "trainers/eval_suite.h"

#include <cmath>
#include <functional>
#include <fstream>

#include <fmt/format.h>

#include "autograd/engine.h"
#include "core/error.h"
#include "core/json_read.h"
#include "data/batch.h"
#include "data/sync_file.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "layers/natsl_attention.h"
#include "trainers/data_factory.h"
#include "trainers/io/safetensors.h"
#include "trainers/trainer.h"

namespace natsl {
namespace {

// Answer accuracy of `batches` batches of a synthetic source.
nlohmann::json score_source(const CausalLM& model, DataSource& src, int64_t batches) {
  AnswerScore score;
  for (int64_t i = 0; i < batches; ++i) {
    const Batch b = src.next(i);
    score += score_answers(argmax_last(model.forward(b.inputs)), b.targets);
  }
  return {{"accuracy", score.accuracy()}, {"exact_match", score.exact_match()}, {"answers", score.total}};
}

// Natural-log softmax of one row of logits at `token`.
double log_prob(const float* row, int64_t V, int64_t token) {
  double mx = row[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(row[v]));
  double z = 0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]) - mx);
  return double(row[token]) - mx - std::log(z);
}

nlohmann::json score_choices(const CausalLM& model, const EvalSuite& suite, int64_t vocab, FILE* progress) {
  std::ifstream in(suite.choices);
  if (!in) throw InputError("cannot read the multiple-choice file '" + suite.choices + "'");
  const std::unique_ptr<Tokenizer> tok = open_tokenizer(TokenizerSpec{});
  if (tok->vocab_size() > vocab)
    throw InputError("the model's vocabulary (" + std::to_string(vocab) + ") is smaller than the tokenizer's (" +
                     std::to_string(tok->vocab_size()) + ")");
  int64_t requests = 0, correct = 0, correct_norm = 0, labelled = 0, line_no = 0;
  nlohmann::json per = nlohmann::json::array();
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = suite.choices + ":" + std::to_string(line_no);
    const nlohmann::json r = nlohmann::json::parse(line, nullptr, false);
    if (!r.is_object() || !r.contains("context") || !r["context"].is_string() || !r.contains("continuations") ||
        !r["continuations"].is_array() || r["continuations"].empty())
      throw InputError(where + ": expected {\"context\": string, \"continuations\": [string, ...], \"label\": n}");
    std::vector<uint32_t> ctx;
    if (tok->bos_id()) ctx.push_back(*tok->bos_id());
    tok->encode(r["context"].get<std::string>(), ctx);
    std::vector<double> ll, ll_per_byte;
    nlohmann::json cands = nlohmann::json::array();
    for (const auto& c : r["continuations"]) {
      if (!c.is_string() || c.get<std::string>().empty())
        throw InputError(where + ": every continuation must be a non-empty string");
      std::vector<uint32_t> seq = ctx;
      tok->encode(c.get<std::string>(), seq);
      const int64_t n_ctx = int64_t(ctx.size()), n = int64_t(seq.size());
      std::vector<int32_t> ids(seq.begin(), seq.end() - 1);
      const Tensor logits = model.forward(Tensor::from_vector(ids, {1, n - 1}, DType::i32))
                                .to(DType::f32).to(kCPU).contiguous();
      const float* x = logits.data<float>();
      double sum = 0;
      bool greedy = true;
      for (int64_t p = n_ctx; p < n; ++p) {
        const float* row = x + (p - 1) * vocab;
        sum += log_prob(row, vocab, seq[size_t(p)]);
        int64_t best = 0;
        for (int64_t v = 1; v < vocab; ++v)
          if (row[v] > row[best]) best = v;
        greedy = greedy && best == int64_t(seq[size_t(p)]);
      }
      ll.push_back(sum);
      ll_per_byte.push_back(sum / double(c.get<std::string>().size()));
      cands.push_back({{"loglik", sum}, {"is_greedy", greedy}});
    }
    const auto argmax = [](const std::vector<double>& v) { return int64_t(std::max_element(v.begin(), v.end()) - v.begin()); };
    ++requests;
    if (r.contains("label")) {
      const int64_t label = json_integer<int64_t>(r["label"], where + ": label");
      if (label < 0 || label >= int64_t(ll.size())) throw InputError(where + ": label " + std::to_string(label) + " names no continuation");
      ++labelled;
      correct += argmax(ll) == label;
      correct_norm += argmax(ll_per_byte) == label;
    }
    if (suite.per_request) per.push_back({{"line", line_no}, {"candidates", cands}});
    if (progress && requests % 100 == 0) fmt::print(progress, "choices: {} requests\n", requests);
  }
  nlohmann::json out = {{"file", suite.choices}, {"requests", requests}, {"labelled", labelled}};
  if (labelled) {
    out["acc"] = double(correct) / double(labelled);
    out["acc_norm"] = double(correct_norm) / double(labelled);  // log-likelihood per byte of the continuation
  }
  if (suite.per_request) out["per_request"] = per;
  return out;
}

// A text file's tokens, BOS first (`what` names the option in errors).
std::vector<int32_t> text_tokens(const std::string& path, int64_t vocab, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot read the " + what + " text '" + path + "'");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  if (text.empty()) throw InputError("the " + what + " text '" + path + "' is empty");
  const std::unique_ptr<Tokenizer> tok = open_tokenizer(TokenizerSpec{});
  if (tok->vocab_size() > vocab)
    throw InputError("the model's vocabulary (" + std::to_string(vocab) + ") is smaller than the tokenizer's");
  std::vector<uint32_t> ids;
  if (tok->bos_id()) ids.push_back(*tok->bos_id());
  tok->encode(text, ids);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

// The text's tokens and the model's logits at every position, as f32, to a safetensors file (replaced
// atomically): what another implementation of the model is compared against.
nlohmann::json dump_logits(const CausalLM& model, const std::string& text, const std::string& out, int64_t vocab) {
  const std::vector<int32_t> ids = text_tokens(text, vocab, "--logits");
  const int64_t T = int64_t(ids.size());
  const Tensor tokens = Tensor::from_vector(ids, {T}, DType::i32);
  const Tensor logits = model.forward(tokens.view({1, T})).to(DType::f32).to(kCPU).contiguous().view({T, vocab});
  replace_file_atomically_with(
      out, [&](const std::string& tmp) { write_safetensors(tmp, {{"tokens", tokens}, {"logits", logits}}); });
  return {{"file", text}, {"tokens", T}, {"vocab", vocab}, {"out", out}};
}

nlohmann::json routing_map(CausalLM& model, const std::string& path, int64_t vocab) {
  const std::vector<int32_t> in32 = text_tokens(path, vocab, "routing-map");
  model.forward(Tensor::from_vector(in32, {1, int64_t(in32.size())}, DType::i32));
  nlohmann::json layers = nlohmann::json::object();
  for (const auto& [name, layer] : natsl_layers(model)) {
    const Tensor m = layer->last_mask_softmax();  // [1, NC, Hr]
    const std::vector<double> v = m.to(DType::f64).to_vector<double>();
    nlohmann::json rows = nlohmann::json::array();
    for (int64_t c = 0; c < m.size(1); ++c) {
      nlohmann::json row = nlohmann::json::array();
      for (int64_t h = 0; h < m.size(2); ++h) row.push_back(int(v[size_t(c * m.size(2) + h)]));
      rows.push_back(row);
    }
    layers[name] = rows;
  }
  if (layers.empty()) throw InputError("--routing-map: the model has no natsl layer, so nothing is routed");
  return {{"file", path}, {"tokens", in32.size()}, {"chunk", 64}, {"layers", layers}};
}

}  // namespace

nlohmann::json run_eval_suite(Trainer& trainer, const EvalSuite& suite, FILE* progress) {
  const RunConfig& cfg = trainer.config();
  CausalLM& model = trainer.model_for_eval();
  NoGradGuard no_grad;
  model.eval();
  nlohmann::json out = nlohmann::json::object();
  const uint64_t seed = eval_seed(uint64_t(cfg.train.seed));
  // One synthetic grid point: the source `make` builds (an InputError names `point`), scored and labelled.
  auto grid_point = [&](const std::string& task, const std::string& point, const nlohmann::json& labels,
                        const std::function<std::unique_ptr<DataSource>()>& make) {
    std::unique_ptr<DataSource> src;
    try {
      src = make();
    } catch (const InputError& e) {
      throw InputError(task + " grid point " + point + ": " + e.what());
    }
    nlohmann::json r = score_source(model, *src, suite.batches);
    r.update(labels);
    if (progress) fmt::print(progress, "{} {}: accuracy {:.4f}\n", task, point, r["accuracy"].get<double>());
    out[task == "MQAR" ? "mqar" : "niah"].push_back(r);
  };
  if (!suite.mqar_pairs.empty() && !suite.mqar_lengths.empty()) {
    out["mqar"] = nlohmann::json::array();
    for (int64_t L : suite.mqar_lengths)
      for (int64_t k : suite.mqar_pairs) {
        RunConfig c = cfg;
        c.data.mqar.num_kv_pairs = k;
        c.train.seq_len = L;
        grid_point("MQAR", fmt::format("{} pairs x {} tokens", k, L), {{"pairs", k}, {"seq_len", L}},
                   [&] { return std::make_unique<MqarSource>(mqar_options(c, seed)); });
      }
  }
  if (!suite.niah_lengths.empty()) {
    out["niah"] = nlohmann::json::array();
    for (int64_t L : suite.niah_lengths)
      for (double d : suite.niah_depths) {
        RunConfig c = cfg;
        c.data.niah.depth_percent = d;
        c.train.seq_len = L;
        grid_point("NIAH", fmt::format("{} tokens at depth {}%", L, d), {{"seq_len", L}, {"depth_percent", d}},
                   [&] { return std::make_unique<NiahSource>(niah_options(c, seed)); });
      }
  }
  if (!suite.choices.empty()) out["choices"] = score_choices(model, suite, cfg.model.vocab_size, progress);
  if (!suite.routing_map.empty()) out["routing_map"] = routing_map(model, suite.routing_map, cfg.model.vocab_size);
  if (!suite.logits.empty()) {
    if (suite.logits.size() != 2) throw InputError("--logits takes two paths: TEXT OUT.safetensors");
    out["logits"] = dump_logits(model, suite.logits[0], suite.logits[1], cfg.model.vocab_size);
  }
  model.train();
  return out;
}

}  // namespace natsl
