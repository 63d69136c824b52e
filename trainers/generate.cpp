#include "trainers/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "autograd/engine.h"
#include "layers/model/lm_decoder.h"
#include "layers/natsl_attention.h"
#include "trainers/io/checkpoint.h"
#include "trainers/trainer.h"

namespace natsl {

void validate_sampling(const SamplingOptions& o) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    throw InputError("--temperature must be a finite number >= 0 (0 = greedy), got " + std::to_string(o.temperature));
  if (o.top_k < 0) throw InputError("--top-k must be >= 0 (0 = off), got " + std::to_string(o.top_k));
  if (!(o.top_p > 0 && o.top_p <= 1))
    throw InputError("--top-p must be in (0, 1] (1 = off), got " + std::to_string(o.top_p));
}

Sampler::Sampler(const SamplingOptions& o) : o_(o), gen_(o.seed) { validate_sampling(o); }

std::vector<double> Sampler::distribution(std::span<const float> logits, int64_t candidates) const {
  const size_t n = candidates > 0 ? std::min(logits.size(), size_t(candidates)) : logits.size();
  NATSL_CHECK(n > 0, "Sampler: no candidate token");
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(logits[i])) throw Error("the model produced a non-finite logit (token " + std::to_string(i) + ")");
  std::vector<double> p(n, 0.0);
  if (o_.temperature == 0) {
    p[size_t(std::max_element(logits.begin(), logits.begin() + std::ptrdiff_t(n)) - logits.begin())] = 1.0;
    return p;
  }
  // Ids by falling logit (ties: lower id first), cut to top-k.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  size_t keep = o_.top_k > 0 ? std::min(n, size_t(o_.top_k)) : n;
  const double zmax = double(logits[order[0]]) / o_.temperature;
  double total = 0;
  for (size_t r = 0; r < keep; ++r) total += p[order[r]] = std::exp(double(logits[order[r]]) / o_.temperature - zmax);
  if (o_.top_p < 1) {
    double mass = 0;
    size_t r = 0;
    while (r < keep) {
      mass += p[order[r++]] / total;
      if (mass >= o_.top_p) break;
    }
    for (size_t s = r; s < keep; ++s) p[order[s]] = 0;
    keep = r;
    total = 0;
    for (size_t s = 0; s < keep; ++s) total += p[order[s]];
  }
  for (double& v : p) v /= total;
  return p;
}

uint32_t Sampler::sample(std::span<const float> logits, int64_t candidates) {
  const std::vector<double> p = distribution(logits, candidates);
  if (o_.temperature == 0) return uint32_t(std::max_element(p.begin(), p.end()) - p.begin());
  const double u = double(philox_uniform(gen_.seed, gen_.reserve(1)));
  double cum = 0;
  size_t last = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) continue;
    last = i;
    cum += p[i];
    if (u < cum) return uint32_t(i);
  }
  return uint32_t(last);  // u beyond the rounded total
}

GenerateResult generate(const CausalLM& model, const std::vector<uint32_t>& prompt, const GenerateOptions& opts) {
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
  if (prompt.empty()) throw InputError("the prompt has no tokens");
  if (opts.max_new_tokens < 1) throw InputError("--max-new-tokens must be at least 1");
  Sampler sampler(opts.sampling);
  LMDecoder decoder(model);
  const Device dev = model.backbone().embeddings().weight().device();
  const auto last_row = [](const Tensor& logits) { return logits.to(DType::f32).to(kCPU).to_vector<float>(); };

  GenerateResult r;
  r.prompt_tokens = int64_t(prompt.size());
  const auto t0 = Clock::now();
  const std::vector<int32_t> ids(prompt.begin(), prompt.end());
  std::vector<float> row = last_row(decoder.prefill(Tensor::from_vector(ids, {1, r.prompt_tokens}, DType::i32, dev),
                                                    /*all_positions=*/false));
  r.prefill_seconds = seconds_since(t0);
  const auto t1 = Clock::now();
  for (int64_t i = 0; i < opts.max_new_tokens; ++i) {
    const uint32_t token = sampler.sample(row, opts.candidates);
    if (opts.stop_token && token == *opts.stop_token) {
      r.stopped = true;
      break;
    }
    r.tokens.push_back(token);
    if (i + 1 == opts.max_new_tokens) break;
    row = last_row(decoder.step(Tensor::from_vector(std::vector<int32_t>{int32_t(token)}, {1, 1}, DType::i32, dev)));
    ++r.decode_steps;
  }
  r.decode_seconds = seconds_since(t1);
  r.kv_bytes = decoder.kv_bytes();
  r.full_attention_kv_bytes = decoder.full_attention_kv_bytes();
  r.state_bytes = decoder.state_bytes();
  return r;
}

InferenceModel load_inference_model(const RunConfig& cfg, const std::string& checkpoint_dir,
                                    const nlohmann::json* tokenizer_identity) {
  InferenceModel m;
  m.device = resolve_device(cfg.train.device);
  const Precision precision = cfg.train.precision == "bf16" ? Precision::bf16 : Precision::f32;
  if (precision == Precision::bf16 && m.device.is_cpu())
    throw InputError("train.precision=bf16 needs a CUDA device (the CPU path is f32); use train.precision=f32");
  check_model_fits_device(cfg.model, m.device, precision);
  CheckpointReader ck(checkpoint_dir);
  check_checkpoint_model(ck, cfg, "generate with the config the checkpoint was trained with");
  if (tokenizer_identity) check_checkpoint_tokenizer(ck, *tokenizer_identity);
  m.model = std::make_shared<CausalLM>(cfg.model);
  m.store = std::make_unique<ParameterStore>(*m.model, m.device, precision);
  const auto& entries = m.store->layout().entries();
  if (ck.model().entries().size() != entries.size())
    throw InputError("'" + ck.model().path() + "' holds " + std::to_string(ck.model().entries().size()) +
                     " tensors but the model has " + std::to_string(entries.size()) + " parameters");
  for (size_t i = 0; i < entries.size(); ++i) ck.model().read_into(entries[i].name, m.store->master().view(int(i)));
  m.store->sync_compute_from_master();
  for (auto& [name, layer] : natsl_layers(*m.model)) layer->seed_noise(uint64_t(cfg.train.seed));
  m.model->eval();
  m.step = ck.step();
  return m;
}

}  // namespace natsl
