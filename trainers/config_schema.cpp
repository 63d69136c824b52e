#include "trainers/config_schema.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include <fmt/format.h>

#include "core/error.h"
#include "layers/recompute.h"

namespace natsl {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

FieldSpec num(std::string key, FieldPtr p, std::optional<double> lo, std::optional<double> hi = std::nullopt,
              std::string help = "") {
  FieldSpec f{std::move(key), p, lo, hi, {}, -1, std::move(help), false, false};
  return f;
}
FieldSpec choice(std::string key, FieldPtr p, std::vector<std::string> choices) {
  FieldSpec f{std::move(key), p, std::nullopt, std::nullopt, std::move(choices), -1, "", false, false};
  return f;
}
FieldSpec plain(std::string key, FieldPtr p) {
  return FieldSpec{std::move(key), p, std::nullopt, std::nullopt, {}, -1, "", false, false};
}
// A number whose bounds are excluded where asked: AdamW divides by eps (so 0 is out) and beta = 1 never
// forgets (its bias correction divides by 1 - beta^t = 0).
FieldSpec open_num(std::string key, FieldPtr p, double lo, bool lo_open, double hi, bool hi_open,
                   std::string help = "") {
  FieldSpec f = num(std::move(key), p, lo, hi, std::move(help));
  f.min_exclusive = lo_open;
  f.max_exclusive = hi_open;
  return f;
}

}  // namespace

std::vector<FieldSpec> config_schema(RunConfig& c) {
  ModelConfig& m = c.model;
  DataConfig& d = c.data;
  TrainConfig& t = c.train;
  const std::vector<std::string> mixers = {"attn", "gdn", "natsl"};
  std::vector<FieldSpec> s = {
      plain("model.name", &m.name),
      num("model.vocab_size", &m.vocab_size, 2),
      num("model.hidden_size", &m.hidden_size, 1),
      num("model.num_layers", &m.num_layers, 1),
      choice("model.layers", &m.layers, mixers),
      choice("model.default_mixer", &m.default_mixer, mixers),
      num("model.attn_layers", &m.attn_layers, 0),
      num("model.natsl_layers", &m.natsl_layers, 0),
      num("model.num_attn_heads", &m.num_attn_heads, 1),
      num("model.attn_head_dim", &m.attn_head_dim, 0, std::nullopt, "0 = hidden_size / num_attn_heads"),
      num("model.attn_value_dim", &m.attn_value_dim, 0, std::nullopt, "0 = attn_head_dim"),
      plain("model.attn_qk_norm", &m.attn_qk_norm),
      plain("model.attn_rope", &m.attn_rope),
      num("model.rope_theta", &m.rope_theta, 1.0),
      num("model.num_heads", &m.num_heads, 1),
      num("model.head_dim", &m.head_dim, 1),
      num("model.expand_v", &m.expand_v, 0.0, 16.0),
      plain("model.use_short_conv", &m.use_short_conv),
      num("model.conv_size", &m.conv_size, 1, 64),
      plain("model.use_gate", &m.use_gate),
      plain("model.allow_neg_eigval", &m.allow_neg_eigval),
      num("model.nats_block_size", &m.nats_block_size, 1),
      num("model.num_nats_heads", &m.num_nats_heads, 0, std::nullopt, "0 = num_heads"),
      choice("model.nats_sample", &m.nats_sample, {"argmax", "gumbel"}),
      num("model.gumbel_tau", &m.gumbel_tau, 1e-6),
      plain("model.reference_attn_backward", &m.reference_attn_backward),
      choice("model.nats_routing", &m.nats_routing,
             {"learned", "topk", "all_softmax", "all_gdn", "every_nth", "random"}),
      num("model.nats_routing_fraction", &m.nats_routing_fraction, 0.0, 1.0),
      num("model.nats_routing_every", &m.nats_routing_every, 1),
      num("model.nats_frac_penalty", &m.nats_frac_penalty, 0.0, 1e6),
      num("model.nats_frac_target", &m.nats_frac_target, 0.0, 1.0, "[] = off; one value, or one per NAtS-L layer"),
      num("model.nats_frac_target_coef", &m.nats_frac_target_coef, 0.0, 1e6),
      num("model.nats_frac_warmup_steps", &m.nats_frac_warmup_steps, 0),
      choice("model.gumbel_tau_schedule", &m.gumbel_tau_schedule, {"constant", "linear", "exp"}),
      num("model.gumbel_tau_end", &m.gumbel_tau_end, 1e-6),
      num("model.hidden_ratio", &m.hidden_ratio, 0.0, 64.0),
      num("model.intermediate_size", &m.intermediate_size, 0, std::nullopt, "0 = from hidden_ratio"),
      num("model.norm_eps", &m.norm_eps, 0.0, 1.0),
      num("model.initializer_range", &m.initializer_range, 0.0, 10.0),
      plain("model.tie_word_embeddings", &m.tie_word_embeddings),

      choice("data.source", &d.source, {"mqar", "niah", "text"}),
      num("data.mqar.vocab_size", &d.mqar.vocab_size, 0, std::nullopt, "0 = model.vocab_size"),
      num("data.mqar.num_kv_pairs", &d.mqar.num_kv_pairs, 1),
      num("data.mqar.power_a", &d.mqar.power_a, 1e-9, 1e9),
      num("data.mqar.num_passes", &d.mqar.num_passes, 1),
      plain("data.mqar.random_non_queries", &d.mqar.random_non_queries),
      choice("data.niah.haystack", &d.niah.haystack, {"noise", "essay"}),
      choice("data.niah.value", &d.niah.value, {"number", "uuid"}),
      plain("data.niah.essay_path", &d.niah.essay_path),
      num("data.niah.depth_percent", &d.niah.depth_percent, -1.0, 100.0, "a percentage, or -1 for RULER's grid"),
      plain("data.text.train", &d.text.train),
      plain("data.text.val", &d.text.val),
      num("data.text.val_fraction", &d.text.val_fraction, 0.0, 0.9),
      plain("data.text.mix", &d.text.mix),

      choice("tokenizer.kind", &c.tokenizer.kind, {"byte", "sentencepiece"}),
      plain("tokenizer.model", &c.tokenizer.model),

      num("train.steps", &t.steps, 1),
      num("train.batch_size", &t.batch_size, 1),
      num("train.seq_len", &t.seq_len, 2),
      num("train.grad_accum", &t.grad_accum, 1),
      num("train.global_batch_size", &t.global_batch_size, 0, std::nullopt,
          "0 = batch_size x grad_accum x world size"),
      num("train.zero", &t.zero, 0, 1, "0 = plain data parallel, 1 = ZeRO-1"),
      open_num("train.bucket_mb", &t.bucket_mb, 0.0, true, 1e6, false),
      open_num("train.dist_timeout_s", &t.dist_timeout_s, 0.0, true, 1e6, false),
      plain("train.rank_logs", &t.rank_logs),
      num("train.profile_steps", &t.profile_steps, 1, std::nullopt, "[] = off; [first, end): the steps to time"),
      plain("train.nvtx", &t.nvtx),
      plain("train.cuda_graph", &t.cuda_graph),
      num("train.lr", &t.lr, 0.0, 10.0),
      num("train.min_lr_ratio", &t.min_lr_ratio, 0.0, 1.0),
      choice("train.schedule", &t.schedule, {"cosine", "linear", "wsd", "constant"}),
      num("train.warmup_steps", &t.warmup_steps, 0),
      num("train.decay_fraction", &t.decay_fraction, 0.0, 1.0),
      choice("train.wsd_decay_shape", &t.wsd_decay_shape, {"linear", "sqrt", "cosine"}),
      open_num("train.betas", &t.betas, 0.0, false, 1.0, true),
      open_num("train.eps", &t.eps, 0.0, true, 1.0, false),
      num("train.weight_decay", &t.weight_decay, 0.0, 10.0),
      plain("train.model_no_decay", &t.model_no_decay),
      plain("train.decay_embeddings", &t.decay_embeddings),
      plain("train.no_decay", &t.no_decay),
      num("train.clip_grad_norm", &t.clip_grad_norm, 0.0, std::nullopt, "0 = no clipping"),
      plain("train.skip_nonfinite", &t.skip_nonfinite),
      num("train.max_consecutive_nonfinite", &t.max_consecutive_nonfinite, 1, std::nullopt,
          "steps in a row with a non-finite gradient norm before the run stops"),
      choice("train.precision", &t.precision, {"f32", "bf16"}),
      plain("train.device", &t.device),
      num("train.seed", &t.seed, 0),
      plain("train.out_dir", &t.out_dir),
      plain("train.init_from", &t.init_from),
      num("train.log_every", &t.log_every, 1),
      num("train.eval_every", &t.eval_every, 0, std::nullopt, "0 = only at the end"),
      num("train.eval_batches", &t.eval_batches, 0),
      num("train.ckpt_every", &t.ckpt_every, 0, std::nullopt, "0 = only at the end"),
      num("train.keep_last", &t.keep_last, 1),
      num("train.stop_at_step", &t.stop_at_step, 0, std::nullopt, "0 = run to train.steps"),
      plain("train.deterministic", &t.deterministic),
      choice("train.recompute", &t.recompute, recompute_kinds()),
      choice("train.recompute_keep", &t.recompute_keep, recompute_keep_kinds()),

      plain("resume", &c.resume),
  };
  for (auto& f : s)
    if (f.key == "train.betas") f.list_size = 2;
  return s;
}

std::vector<std::string> config_sections() { return {"model", "data", "data.mqar", "data.niah", "data.text", "tokenizer", "train"}; }

std::string field_type_name(const FieldSpec& f) {
  return std::visit(
      [](auto* p) -> std::string {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, int64_t>) return "an integer";
        else if constexpr (std::is_same_v<T, double>) return "a number";
        else if constexpr (std::is_same_v<T, bool>) return "true or false";
        else if constexpr (std::is_same_v<T, std::string>) return "a string";
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>) return "a list of integers";
        else if constexpr (std::is_same_v<T, std::vector<double>>) return "a list of numbers";
        else if constexpr (std::is_same_v<T, std::vector<MixEntry>>) return "a list of {path: ..., weight: ...}";
        else return "a list of strings";
      },
      f.ptr);
}

namespace {

std::string shortest(double v) { return fmt::format("{}", v); }

std::string range_text(const FieldSpec& f) {
  std::string r;
  if (f.min && f.max)
    r = std::string("in ") + (f.min_exclusive ? "(" : "[") + shortest(*f.min) + ", " + shortest(*f.max) +
        (f.max_exclusive ? ")" : "]");
  else if (f.min) r = (f.min_exclusive ? "> " : ">= ") + shortest(*f.min);
  else if (f.max) r = (f.max_exclusive ? "< " : "<= ") + shortest(*f.max);
  if (!f.help.empty()) r += " (" + f.help + ")";
  return r;
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string r;
  for (size_t i = 0; i < v.size(); ++i) r += (i ? sep : "") + v[i];
  return r;
}

void check_number(const FieldSpec& f, double v, const std::string& where, const std::string& shown) {
  const bool below = f.min && (f.min_exclusive ? v <= *f.min : v < *f.min);
  const bool above = f.max && (f.max_exclusive ? v >= *f.max : v > *f.max);
  if (!std::isfinite(v) || below || above)
    throw InputError(where + ": value " + shown + " of '" + f.key + "' is out of range: expected " + range_text(f));
}

void check_choice(const FieldSpec& f, const std::string& v, const std::string& where) {
  if (f.choices.empty() || std::find(f.choices.begin(), f.choices.end(), v) != f.choices.end()) return;
  std::string hint = nearest_name(v, f.choices);
  throw InputError(where + ": '" + v + "' is not a valid value of '" + f.key + "': expected one of " +
                   join(f.choices, ", ") + (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
}

[[noreturn]] void wrong_type(const FieldSpec& f, const std::string& where, const std::string& got) {
  throw InputError(where + ": '" + f.key + "' must be " + field_type_name(f) + ", got " + got);
}

std::string describe(const YAML::Node& n) {
  if (n.IsNull()) return "no value";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "'" + n.Scalar() + "'";
}

// Scalar conversions that reject what a YAML 1.2 reader would not call that type ("3.5" for an integer).
template <class T>
bool scalar_as(const YAML::Node& n, T& out) {
  if (!n.IsScalar()) return false;
  if constexpr (std::is_same_v<T, std::string>) {
    out = n.Scalar();
    return true;
  } else {
    return YAML::convert<T>::decode(n, out);
  }
}

template <class T>
T parse_scalar(const FieldSpec& f, const YAML::Node& n, const std::string& where) {
  T v{};
  if (!scalar_as(n, v)) wrong_type(f, where, describe(n));
  if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) check_number(f, double(v), where, n.Scalar());
  if constexpr (std::is_same_v<T, std::string>) {
    // The config is written into checkpoints and metrics as JSON, which holds only UTF-8: refuse other bytes
    // here (found by tests/fuzz/fuzz_config; they used to fail as an internal error at the first checkpoint).
    try {
      (void)nlohmann::json(v).dump();
    } catch (const nlohmann::json::type_error&) {
      throw InputError(where + ": '" + f.key + "' is not valid UTF-8 text; save the config as UTF-8");
    }
    check_choice(f, v, where);
  }
  return v;
}

// data.text.mix: a list of {path: STRING, weight: NUMBER > 0}, both keys required, no other key.
std::vector<MixEntry> parse_mix(const FieldSpec& f, const YAML::Node& node, const std::string& where) {
  std::vector<MixEntry> out;
  if (node.IsNull()) return out;
  if (!node.IsSequence()) wrong_type(f, where, describe(node));
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node e = node[i];
    const std::string key = f.key + "[" + std::to_string(i) + "]";
    if (!e.IsMap())
      throw InputError(where + ": '" + key + "' must be a mapping {path: ..., weight: ...}, got " + describe(e));
    MixEntry m;
    std::set<std::string> seen;
    for (const auto& kv : e) {
      const std::string name = kv.first.IsScalar() ? kv.first.Scalar() : "?";
      if (!seen.insert(name).second) throw InputError(where + ": key '" + key + "." + name + "' appears twice");
      if (name == "path") {
        m.path = parse_scalar<std::string>(plain(key + ".path", &m.path), kv.second, where);
      } else if (name == "weight") {
        FieldSpec w = num(key + ".weight", &m.weight, 0.0, std::nullopt, "weights are normalised over the sources");
        w.min_exclusive = true;
        m.weight = parse_scalar<double>(w, kv.second, where);
      } else {
        std::string near = nearest_name(name, {"path", "weight"});
        throw InputError(where + ": unknown key '" + key + "." + name + "'" +
                         (near.empty() ? "" : " (did you mean '" + key + "." + near + "'?)") +
                         "; a mix entry has the keys path and weight");
      }
    }
    if (m.path.empty())
      throw InputError(where + ": '" + key + ".path' is missing: give the source's shard file, directory, glob, "
                       "`natsl tokenize` prefix or text file");
    if (!seen.count("weight"))
      throw InputError(where + ": '" + key + ".weight' is missing: give the source's weight (a number > 0)");
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace

void to_json(nlohmann::json& j, const MixEntry& m) { j = {{"path", m.path}, {"weight", m.weight}}; }

void set_field_from_yaml(const FieldSpec& f, const YAML::Node& node, const std::string& where) {
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::vector<MixEntry>>) {
          *p = parse_mix(f, node, where);
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>> ||
                             std::is_same_v<T, std::vector<std::string>>) {
          using E = typename T::value_type;
          T out;
          if (node.IsSequence()) {
            for (const auto& e : node) out.push_back(parse_scalar<E>(f, e, where));
          } else if (node.IsNull()) {
            // `key: []` written as an empty value: an empty list.
          } else if constexpr (std::is_same_v<E, std::string>) {
            out.push_back(parse_scalar<E>(f, node, where));  // a single string is a one-element list
          } else {
            wrong_type(f, where, describe(node));
          }
          if (f.list_size >= 0 && int64_t(out.size()) != f.list_size)
            throw InputError(where + ": '" + f.key + "' must have " + std::to_string(f.list_size) + " entries, got " +
                             std::to_string(out.size()));
          *p = std::move(out);
        } else {
          if (node.IsNull()) wrong_type(f, where, "no value");
          *p = parse_scalar<T>(f, node, where);
        }
      },
      f.ptr);
}

void set_field_from_json(const FieldSpec& f, const nlohmann::json& value, const std::string& where) {
  // JSON written by field_to_json: go through YAML so the same checks apply (JSON is a subset of YAML).
  set_field_from_yaml(f, YAML::Load(value.dump()), where);
}

nlohmann::json field_to_json(const FieldSpec& f) {
  return std::visit([](auto* p) { return nlohmann::json(*p); }, f.ptr);
}

std::string field_to_string(const FieldSpec& f) {
  return std::visit(
      [](auto* p) -> std::string {
        using T = std::remove_pointer_t<decltype(p)>;
        auto one = [](const auto& v) -> std::string {
          using E = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<E, bool>) return v ? "true" : "false";
          else if constexpr (std::is_same_v<E, double>) {
            std::string s = fmt::format("{}", v);
            // Keep it a float for YAML readers ("1" -> "1.0").
            if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
            return s;
          } else if constexpr (std::is_same_v<E, std::string>) {
            YAML::Emitter e;
            e << v;
            return e.c_str();
          } else return fmt::format("{}", v);
        };
        // Inside [...] or {...} a plain scalar may not hold ',', ']', '}' and the like: a string there is
        // written as the emitter writes it in a flow sequence (quoted where needed), less the brackets.
        auto in_flow = [&](const auto& v) -> std::string {
          if constexpr (std::is_same_v<std::decay_t<decltype(v)>, std::string>) {
            YAML::Emitter e;
            e << YAML::Flow << YAML::BeginSeq << v << YAML::EndSeq;
            const std::string seq = e.c_str();
            return seq.substr(1, seq.size() - 2);
          } else {
            return one(v);
          }
        };
        if constexpr (std::is_same_v<T, std::vector<MixEntry>>) {
          std::string r = "[";
          for (size_t i = 0; i < p->size(); ++i)
            r += (i ? ", " : "") + std::string("{path: ") + in_flow((*p)[i].path) + ", weight: " +
                 one((*p)[i].weight) + "}";
          return r + "]";
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>> ||
                             std::is_same_v<T, std::vector<std::string>>) {
          std::string r = "[";
          for (size_t i = 0; i < p->size(); ++i) r += (i ? ", " : "") + in_flow((*p)[i]);
          return r + "]";
        } else {
          return one(*p);
        }
      },
      f.ptr);
}

size_t edit_distance(const std::string& a, const std::string& b) {
  // Optimal string alignment: insertions, deletions, substitutions and adjacent transpositions cost 1.
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

std::string nearest_name(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    size_t dist = edit_distance(word, c);
    // A candidate that contains the word (or the reverse) is close whatever the lengths ("lr" / "lr_min").
    if (word.size() >= 3 && c.size() >= 3 && (c.find(word) != std::string::npos || word.find(c) != std::string::npos))
      dist = std::min(dist, size_t(2));
    // A dotted key whose last part is the word is the closest of all ("steps" -> "train.steps", not
    // "model.nats_frac_warmup_steps").
    if (c.size() > word.size() && c[c.size() - word.size() - 1] == '.' && c.ends_with(word)) dist = 0;
    if (dist < best_d) best_d = dist, best = c;
  }
  // Close means at most a third of the longer name changed (at least 2 edits allowed).
  size_t allowed = std::max<size_t>(2, std::max(word.size(), best.size()) / 3);
  return best_d <= allowed ? best : "";
}

}  // namespace natsl
