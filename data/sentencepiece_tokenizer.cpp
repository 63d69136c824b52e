#include "data/sentencepiece_tokenizer.h"

#include <array>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <tuple>
#include <unordered_map>

#include <fmt/format.h>

#include "core/error.h"
#include "data/file_checksum.h"

#ifdef NATSL_WITH_SENTENCEPIECE
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#endif

namespace natsl {

#ifdef NATSL_WITH_SENTENCEPIECE

bool sentencepiece_available() { return true; }

namespace {

std::string read_model_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw InputError("tokenizer.model '" + path + "' does not exist or is not a regular file: give the path of a "
                     "SentencePiece .model file (e.g. Llama-2's tokenizer.model), train one with `natsl tokenizer "
                     "train`, or use tokenizer.kind=byte");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError("cannot read tokenizer.model '" + path + "' (permissions?)");
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// ---- what the model says about itself, read from the serialized ModelProto ----------------------------
// libsentencepiece-dev installs no sentencepiece_model.pb.h, so the few fields needed are read from the
// protobuf wire format directly (field numbers: src/sentencepiece_model.proto). Absent fields take the
// proto2 defaults written below.

struct ModelFacts {
  enum PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  struct Piece {
    std::string text;
    int type = kNormal;
  };
  std::vector<Piece> pieces;
  int model_type = 1;  // TrainerSpec.model_type: UNIGRAM = 1, BPE = 2, WORD = 3, CHAR = 4
  bool treat_whitespace_as_suffix = false, byte_fallback = false;
  std::string normalizer_name;  // NormalizerSpec.name
  std::string charsmap;         // NormalizerSpec.precompiled_charsmap: empty for identity
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

class WireReader {
 public:
  explicit WireReader(std::string_view s) : s_(s) {}
  bool done() const { return i_ >= s_.size(); }
  // The next field: its number, and either its varint / fixed value or its bytes. False at a malformed one.
  bool next(uint32_t& field, uint64_t& value, std::string_view& bytes) {
    uint64_t tag = 0;
    if (!varint(tag)) return false;
    field = uint32_t(tag >> 3);
    switch (tag & 7) {
      case 0: return varint(value);
      case 1: return skip(8);
      case 5:
        if (s_.size() - i_ < 4) return false;
        value = 0;
        std::memcpy(&value, s_.data() + i_, 4);
        i_ += 4;
        return true;
      case 2: {
        uint64_t n = 0;
        if (!varint(n) || n > s_.size() - i_) return false;
        bytes = s_.substr(i_, size_t(n));
        i_ += size_t(n);
        return true;
      }
      default: return false;  // groups: not in this proto
    }
  }

 private:
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64 && i_ < s_.size(); shift += 7) {
      const uint8_t b = uint8_t(s_[i_++]);
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  bool skip(size_t n) {
    if (s_.size() - i_ < n) return false;
    i_ += n;
    return true;
  }
  std::string_view s_;
  size_t i_ = 0;
};

std::optional<ModelFacts> read_model_facts(std::string_view proto) {
  ModelFacts m;
  uint32_t f = 0;
  uint64_t v = 0;
  std::string_view b;
  for (WireReader r(proto); !r.done();) {
    if (!r.next(f, v, b)) return std::nullopt;
    if (f == 1) {  // repeated SentencePiece pieces
      ModelFacts::Piece p;
      for (WireReader q(b); !q.done();) {
        if (!q.next(f, v, b)) return std::nullopt;
        if (f == 1) p.text = std::string(b);
        else if (f == 3) p.type = int(v);
      }
      m.pieces.push_back(std::move(p));
    } else if (f == 2) {  // TrainerSpec
      for (WireReader q(b); !q.done();) {
        if (!q.next(f, v, b)) return std::nullopt;
        if (f == 3) m.model_type = int(v);
        else if (f == 24) m.treat_whitespace_as_suffix = v != 0;
        else if (f == 35) m.byte_fallback = v != 0;
      }
    } else if (f == 3) {  // NormalizerSpec (the one encoding uses; 5 is the denormalizer's)
      for (WireReader q(b); !q.done();) {
        if (!q.next(f, v, b)) return std::nullopt;
        if (f == 1) m.normalizer_name = std::string(b);
        else if (f == 2) m.charsmap = std::string(b);
        else if (f == 3) m.add_dummy_prefix = v != 0;
        else if (f == 4) m.remove_extra_whitespaces = v != 0;
        else if (f == 5) m.escape_whitespaces = v != 0;
      }
    }
  }
  return m;
}

// Every (key, normalized value) rule of a precompiled character map: <u32 trie bytes><Darts-clone double
// array><NUL-terminated values>, as Normalizer::DecodePrecompiledCharsMap reads it. False when malformed.
bool charsmap_rules(std::string_view blob, std::vector<std::pair<std::string, std::string>>& rules) {
  uint32_t trie_bytes = 0;
  if (blob.size() <= 4) return false;
  std::memcpy(&trie_bytes, blob.data(), 4);
  if (trie_bytes > blob.size() - 4 || trie_bytes % 4) return false;
  std::vector<uint32_t> units(trie_bytes / 4);
  std::memcpy(units.data(), blob.data() + 4, trie_bytes);
  const std::string_view values = blob.substr(4 + trie_bytes);
  if (units.empty()) return false;
  // Darts-clone units: has_leaf bit 8, label = bits 0-7 | bit 31 (set on value units), offset in bits 10-31.
  auto offset = [](uint32_t u) { return (u >> 10) << ((u & (1U << 9)) >> 6); };
  auto label = [](uint32_t u) { return u & ((1U << 31) | 0xFF); };
  struct Node {
    size_t base;
    std::string key;
  };
  std::vector<Node> stack = {{offset(units[0]), ""}};
  size_t visited = 0;
  while (!stack.empty()) {
    Node n = std::move(stack.back());
    stack.pop_back();
    if (++visited > (size_t(1) << 22) || n.key.size() > 256) return false;  // not a trie
    for (uint32_t c = 1; c < 256; ++c) {
      const size_t child = n.base ^ c;
      if (child >= units.size() || label(units[child]) != c) continue;
      const uint32_t u = units[child];
      const size_t base = child ^ offset(u);
      std::string key = n.key + char(c);
      if ((u >> 8) & 1) {
        if (base >= units.size()) return false;
        const size_t at = units[base] & ((1U << 31) - 1);
        if (at >= values.size()) return false;
        const size_t end = values.find('\0', at);
        if (end == std::string_view::npos) return false;
        rules.emplace_back(key, std::string(values.substr(at, end - at)));
      }
      stack.push_back({base, std::move(key)});
    }
  }
  return true;
}

constexpr std::string_view kWs = "\xE2\x96\x81";  // U+2581, SentencePiece's escaped space

// Where a text may be cut so that encoding the parts gives the ids of the whole, for a model. The argument
// follows SentencePiece's code (src/normalizer.cc, bpe_model.cc, sentencepiece_processor.cc; 0.1.97):
//  * Normalization runs left to right, each step a longest rule match (user-defined symbols first, then the
//    character map, else one UTF-8 character or one malformed byte). If no rule key and no user-defined
//    symbol holds a space byte, no step spans a space, so the steps are the same in the whole text and in
//    the parts, and a lone space ' ' normalizes to '▁'.
//  * The cut space becomes the '▁' that starts the next part (or ends the previous one, whitespace as
//    suffix). With add_dummy_prefix the dummy '▁' of the part stands for it (the space is dropped); without,
//    the space stays in that part, which is safe only when remove_extra_whitespaces would not strip it.
//    With remove_extra_whitespaces a space is dropped after a space-ending step, so the character before a
//    cut must not normalize to something ending in a space (nor to nothing): checked on every rule whose
//    key ends in that byte; likewise the character after a cut on rules whose key starts with that byte.
//  * BPE starts from the normalized characters (user-defined symbols frozen) and only ever merges two
//    neighbours into a piece of the vocabulary. If no piece holds a non-'▁' character followed by '▁'
//    (suffix: '▁' followed by a non-'▁'), no merge crosses a cut, whose left side ends in a non-'▁'
//    character: each side merges as if alone, in the same order (the queue orders by score, then position).
//    Unused pieces (resegmented through a table built over the whole text) and, without byte fallback, a
//    '▁' that is not a piece (runs of unknown pieces are merged) would break this; so would a unigram
//    model, whose Viterbi search adds float scores along the whole text: in a long text the sums round
//    differently than in the parts, and ids differ (seen on a 100 kB text).
struct CutPlan {
  bool enabled = false;
  std::string reason;   // when not enabled
  bool suffix = false;  // whitespace as suffix: the cut space belongs to the part before
  bool dummy = true;    // add_dummy_prefix: the part's dummy '▁' stands for the cut space, which is dropped
  std::array<bool, 256> ok_before{}, ok_after{};  // bytes that may stand right before / after a cut space
};

CutPlan plan_cuts(const std::optional<ModelFacts>& facts) {
  CutPlan p;
  auto no = [&p](std::string why) {
    p.enabled = false;
    p.reason = std::move(why);
    return p;
  };
  if (!facts) return no("its ModelProto could not be read");
  const ModelFacts& m = *facts;
  if (m.model_type != 2)
    return no(m.model_type == 1 ? "it is a unigram model, whose Viterbi search sums float scores along the whole "
                                  "document, so parts would round differently"
                                : "it is neither a BPE nor a unigram model");
  if (!m.escape_whitespaces) return no("it does not escape whitespace as U+2581");
  p.suffix = m.treat_whitespace_as_suffix;
  p.dummy = m.add_dummy_prefix;
  if (m.remove_extra_whitespaces && !m.add_dummy_prefix)
    return no("it removes extra whitespace without a dummy prefix, so a part could not keep its leading space");
  bool ws_piece = false;
  for (const auto& piece : m.pieces) {
    if (piece.type != ModelFacts::kNormal && piece.type != ModelFacts::kUserDefined &&
        piece.type != ModelFacts::kUnused)
      continue;
    if (piece.type == ModelFacts::kUnused) return no("it has unused pieces");
    if (piece.text.find(' ') != std::string::npos) return no("a piece holds a space");
    if (piece.text == kWs) ws_piece = true;
    const std::string& t = piece.text;
    for (size_t at = t.find(kWs); at != std::string::npos; at = t.find(kWs, at + kWs.size())) {
      const bool ws_before = at >= kWs.size() && std::string_view(t).substr(at - kWs.size(), kWs.size()) == kWs;
      const bool ws_after = std::string_view(t).substr(at + kWs.size(), kWs.size()) == kWs;
      if (!p.suffix && at > 0 && !ws_before)
        return no("a piece ('" + t + "') joins a character to a following U+2581, so words are not independent");
      if (p.suffix && at + kWs.size() < t.size() && !ws_after)
        return no("a piece ('" + t + "') joins U+2581 to a following character, so words are not independent");
    }
  }
  if (!m.byte_fallback && !ws_piece) return no("U+2581 is not a piece and there is no byte fallback");
  p.ok_before.fill(true);
  p.ok_after.fill(true);
  p.ok_before[' '] = p.ok_after[' '] = false;
  if (!m.charsmap.empty()) {
    std::vector<std::pair<std::string, std::string>> rules;
    if (!charsmap_rules(m.charsmap, rules)) return no("its character map could not be read");
    auto starts_ws = [](std::string_view v) { return v.empty() || v[0] == ' ' || v.substr(0, 3) == kWs; };
    auto ends_ws = [](std::string_view v) {
      return v.empty() || v.back() == ' ' || (v.size() >= 3 && v.substr(v.size() - 3) == kWs);
    };
    for (const auto& [key, value] : rules) {
      if (key.find(' ') != std::string::npos)
        return no("its normalization rule '" + m.normalizer_name + "' rewrites text that holds a space");
      if (ends_ws(value)) p.ok_before[uint8_t(key.back())] = false;
      if (starts_ws(value)) p.ok_after[uint8_t(key.front())] = false;
    }
  }
  p.enabled = true;
  return p;
}

// Above kMaxCachedPart bytes a part is encoded without caching.
constexpr size_t kMaxCachedPart = 256;
// Per thread: at most this many parts and ids remembered (~30 MB), then the cache starts over.
constexpr size_t kMaxCachedParts = size_t(1) << 18;
constexpr size_t kMaxArenaWords = size_t(1) << 22;

// A part's ids, remembered by the thread that encoded it, for one tokenizer object at a time: an
// open-addressing table (a lookup touches its slot and one arena entry, where the ids and the key lie side
// by side) over an arena of entries [ids..., key bytes padded to 4].
class PartCache {
 public:
  static constexpr int kBatch = 16;
  std::vector<int> scratch;

  // Forgets the parts of another tokenizer object.
  void use_for(uint64_t owner) {
    if (owner != owner_) reset(owner);
  }

  // Appends the ids of parts[0..n) to out, in order. The table and arena are far bigger than the caches
  // of the CPU, so a lookup waits on memory twice (its slot, then its arena entry): for a batch of parts
  // the slots are prefetched first, then the entries, then the ids copied.
  template <class Encode>
  void append(const std::string_view* parts, int n, std::vector<uint32_t>& out, Encode&& encode) {
    uint64_t h[kBatch];
    uint32_t at[kBatch], ids[kBatch];
    for (int i = 0; i < n; ++i) {
      h[i] = parts[i].size() <= kMaxCachedPart ? hash(parts[i]) : 0;
      if (h[i]) __builtin_prefetch(&slots_[size_t(h[i]) & mask_]);
    }
    for (int i = 0; i < n; ++i) {
      ids[i] = UINT32_MAX;  // not found
      if (!h[i]) continue;
      for (size_t j = size_t(h[i]) & mask_;; j = (j + 1) & mask_) {
        const Slot& s = slots_[j];
        if (s.hash == 0) break;
        if (s.hash == h[i] && s.key_bytes == parts[i].size()) {
          at[i] = s.at;
          ids[i] = s.ids;
          __builtin_prefetch(arena_.data() + s.at);
          break;
        }
      }
    }
    const uint64_t generation = generation_;
    for (int i = 0; i < n; ++i) {
      const std::string_view part = parts[i];
      const uint32_t* e = nullptr;
      size_t count = 0;
      if (!h[i]) {  // too long to keep
        encode(part, scratch);
        out.insert(out.end(), scratch.begin(), scratch.end());
        continue;
      }
      if (ids[i] != UINT32_MAX && generation == generation_ &&
          std::memcmp(arena_.data() + at[i] + ids[i], part.data(), part.size()) == 0) {
        e = arena_.data() + at[i];
        count = ids[i];
      } else {
        std::tie(e, count) = get(part, h[i], encode);  // new, or a 64-bit hash collision, or after a restart
      }
      for (size_t k = 0; k < count; ++k) out.push_back(e[k]);  // a few ids: cheaper than a memmove call
    }
  }

 private:
  static uint64_t hash(std::string_view part) {
    const uint64_t h = xxh3_64(part.data(), part.size());
    return h + (h == 0);  // 0 marks a free slot
  }

  // The ids of `part` (hash h), encoded by `encode(part, scratch)` when not cached (then remembered).
  template <class Encode>
  std::pair<const uint32_t*, size_t> get(std::string_view part, uint64_t h, Encode&& encode) {
    for (size_t i = size_t(h) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.hash == 0) break;
      if (s.hash == h && s.key_bytes == part.size()) {
        const uint32_t* e = arena_.data() + s.at;
        if (std::memcmp(e + s.ids, part.data(), part.size()) == 0) return {e, s.ids};
      }
    }
    encode(part, scratch);
    const size_t words = scratch.size() + (part.size() + 3) / 4;
    if (used_ >= kMaxCachedParts || arena_.size() + words > kMaxArenaWords) reset(owner_);
    if (2 * (used_ + 1) > slots_.size()) grow();
    Slot n{h, uint32_t(arena_.size()), uint16_t(part.size()), uint16_t(scratch.size())};
    arena_.insert(arena_.end(), scratch.begin(), scratch.end());
    arena_.resize(arena_.size() + (part.size() + 3) / 4);
    std::memcpy(arena_.data() + n.at + n.ids, part.data(), part.size());
    place(n);
    ++used_;
    return {arena_.data() + n.at, n.ids};
  }

  struct Slot {
    uint64_t hash = 0;
    uint32_t at = 0;         // arena offset of the entry
    uint16_t key_bytes = 0;  // <= kMaxCachedPart
    uint16_t ids = 0;        // at most a few ids per byte
  };
  void reset(uint64_t owner) {
    owner_ = owner;
    ++generation_;
    slots_.assign(4096, Slot{});
    mask_ = slots_.size() - 1;
    arena_.clear();
    used_ = 0;
  }
  void place(const Slot& n) {
    size_t i = size_t(n.hash) & mask_;
    while (slots_[i].hash != 0) i = (i + 1) & mask_;
    slots_[i] = n;
  }
  void grow() {
    std::vector<Slot> old(2 * slots_.size());
    old.swap(slots_);
    mask_ = slots_.size() - 1;
    for (const Slot& s : old)
      if (s.hash != 0) place(s);
  }
  uint64_t owner_ = 0, generation_ = 0;  // generation: counts restarts (arena offsets die with them)
  std::vector<Slot> slots_;
  size_t mask_ = 0, used_ = 0;
  std::vector<uint32_t> arena_;
};
static_assert(kMaxCachedPart < 65536);
thread_local PartCache t_cache;

std::atomic<uint64_t> g_instances{0};

}  // namespace

struct SentencePieceTokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  CutPlan plan;

  void encode_one(std::string_view text, std::vector<int>& ids, const std::string& path) const {
    ids.clear();
    const auto status = sp.Encode(text, &ids);  // const and thread-safe in SentencePiece
    if (!status.ok())
      throw InputError("SentencePiece model '" + path + "' cannot encode the text: " + status.ToString());
  }

  // Calls part(begin, size) for every part, in order.
  template <class F>
  void for_each_part(std::string_view t, F&& part) const {
    const size_t n = t.size();
    const bool keep_space = !plan.dummy;  // the space stays in a part: before it (suffix) or after it
    size_t start = 0;
    const char* d = t.data();
    for (size_t p = 1; p + 1 < n; ++p) {
      const void* q = std::memchr(d + p, ' ', n - 1 - p);
      if (!q) break;
      p = size_t(static_cast<const char*>(q) - d);
      if (p + 1 >= n || !plan.ok_before[uint8_t(d[p - 1])] || !plan.ok_after[uint8_t(d[p + 1])]) continue;
      if ((p >= 3 && t.substr(p - 3, 3) == kWs) || t.substr(p + 1, 3) == kWs) continue;  // a literal U+2581
      const size_t end = keep_space && plan.suffix ? p + 1 : p;
      part(start, end - start);
      start = keep_space && !plan.suffix ? p : p + 1;
    }
    part(start, n - start);
  }
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : impl_(std::make_unique<Impl>()), path_(model_path) {
  const std::string bytes = read_model_file(model_path);
  const auto status = impl_->sp.LoadFromSerializedProto(bytes);
  if (!status.ok())
    throw InputError("tokenizer.model '" + model_path + "' is not a SentencePiece model (" + status.ToString() +
                     "); give the .model file that `natsl tokenizer train` or spm_train wrote");
  Xxh3Stream h;
  h.update(bytes.data(), bytes.size());
  checksum_ = checksum_hex(h.digest());
  vocab_size_ = impl_->sp.GetPieceSize();
  if (vocab_size_ <= 0) throw InputError("tokenizer.model '" + model_path + "' holds no pieces");
  // SentencePiece says -1 for a marker the model does not have.
  if (impl_->sp.bos_id() >= 0) bos_ = uint32_t(impl_->sp.bos_id());
  if (impl_->sp.eos_id() >= 0) eos_ = uint32_t(impl_->sp.eos_id());
  impl_->plan = plan_cuts(read_model_facts(bytes));
  piecewise_ = impl_->plan.enabled;
  whole_reason_ = impl_->plan.reason;
  instance_ = ++g_instances;
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

void SentencePieceTokenizer::encode_whole(std::string_view text, std::vector<uint32_t>& out) const {
  std::vector<int> ids;
  impl_->encode_one(text, ids, path_);
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<std::string_view> SentencePieceTokenizer::parts(std::string_view text) const {
  if (!piecewise_) return {text};
  std::vector<std::string_view> v;
  impl_->for_each_part(text, [&](size_t at, size_t n) { v.push_back(text.substr(at, n)); });
  return v;
}

void SentencePieceTokenizer::encode(std::string_view text, std::vector<uint32_t>& out) const {
  if (!piecewise_) return encode_whole(text, out);
  PartCache& c = t_cache;
  c.use_for(instance_);
  auto encode_part = [this](std::string_view part, std::vector<int>& ids) { impl_->encode_one(part, ids, path_); };
  std::string_view batch[PartCache::kBatch];
  int n = 0;
  impl_->for_each_part(text, [&](size_t at, size_t size) {
    batch[n++] = text.substr(at, size);
    if (n == PartCache::kBatch) {
      c.append(batch, n, out, encode_part);
      n = 0;
    }
  });
  c.append(batch, n, out, encode_part);
}

std::string SentencePieceTokenizer::decode(std::span<const uint32_t> ids) const {
  std::vector<int> v;
  v.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (int64_t(ids[i]) >= vocab_size_)
      throw InputError(fmt::format("token {} at index {} is not an id of the SentencePiece model '{}' (vocabulary {})",
                                   ids[i], i, path_, vocab_size_));
    v.push_back(int(ids[i]));
  }
  std::string text;
  const auto status = impl_->sp.Decode(v, &text);  // BOS/EOS (control pieces) decode to nothing
  if (!status.ok()) throw InputError("SentencePiece model '" + path_ + "' cannot decode: " + status.ToString());
  return text;
}

nlohmann::json SentencePieceTokenizer::identity() const {
  return {{"kind", "sentencepiece"}, {"vocab_size", vocab_size_}, {"xxh3_64", checksum_}};
}

SentencePieceModel train_sentencepiece(const SentencePieceTrainOptions& opts) {
  if (opts.inputs.empty()) throw InputError("tokenizer train: give at least one input text file (--input FILE)");
  for (const auto& in : opts.inputs) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(in, ec))
      throw InputError("tokenizer train: input file '" + in + "' does not exist or is not a regular file");
  }
  if (opts.model_type != "bpe" && opts.model_type != "unigram")
    throw InputError("tokenizer train: model type '" + opts.model_type + "' is unknown: use bpe or unigram");
  // 3 control pieces (unk, bos, eos) + 256 byte pieces come first; below that nothing is learnt.
  constexpr int64_t kMinVocab = 3 + 256 + 1;
  if (opts.vocab_size < kMinVocab || opts.vocab_size > (int64_t(1) << 24))
    throw InputError(fmt::format("tokenizer train: vocabulary size {} is out of range: it must be at least {} (the "
                                 "unk/bos/eos pieces and the 256 byte-fallback pieces, plus what is learnt) and at "
                                 "most 16777216", opts.vocab_size, kMinVocab));
  if (opts.threads < 1) throw InputError("tokenizer train: --threads must be at least 1");
  std::string inputs;
  for (const auto& in : opts.inputs) inputs += (inputs.empty() ? "" : ",") + in;
  // Every option that could vary between runs is fixed: all sentences are used in file order (no sampling,
  // no shuffling), the random seed is fixed and the thread count given.
  const std::unordered_map<std::string, std::string> args = {
      {"input", inputs},
      {"model_prefix", ""},
      {"vocab_size", std::to_string(opts.vocab_size)},
      {"model_type", opts.model_type},
      {"num_threads", std::to_string(opts.threads)},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"character_coverage", "1.0"},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"hard_vocab_limit", "true"},
      {"minloglevel", "2"},  // errors only: they come back in the status
  };
  std::unordered_map<std::string, std::string> all = args;
  for (const auto& [k, v] : opts.extra) all[k] = v;
  sentencepiece::SetRandomGeneratorSeed(0x5eed);
  std::string serialized;
  const auto status = sentencepiece::SentencePieceTrainer::Train(all, nullptr, &serialized);
  if (!status.ok()) {
    std::string msg = status.message();
    // "./src/trainer_interface.cc(660) [(a) == (b)] Vocabulary size too high ...": keep the sentence.
    if (msg.rfind("./src/", 0) == 0 && msg.find("] ") != std::string::npos) msg = msg.substr(msg.find("] ") + 2);
    // SentencePiece's own wording of a vocabulary the corpus cannot fill.
    if (msg.find("Vocabulary size") != std::string::npos)
      throw InputError("tokenizer train: the corpus cannot fill a vocabulary of " + std::to_string(opts.vocab_size) +
                       " pieces (SentencePiece: " + msg + "); give a smaller --vocab-size or more text");
    throw InputError("tokenizer train: SentencePiece refused the training: " + msg);
  }
  sentencepiece::SentencePieceProcessor sp;
  const auto loaded = sp.LoadFromSerializedProto(serialized);
  if (!loaded.ok()) throw Error("tokenizer train: the trained model does not load: " + loaded.ToString());
  SentencePieceModel m;
  m.model = std::move(serialized);
  for (int i = 0; i < sp.GetPieceSize(); ++i) m.vocab += fmt::format("{}\t{}\n", sp.IdToPiece(i), sp.GetScore(i));
  return m;
}

#else  // built without SentencePiece

bool sentencepiece_available() { return false; }

struct SentencePieceTokenizer::Impl {};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path) : path_(model_path) {
  throw InputError(std::string("tokenizer.kind sentencepiece: ") + kSentencePieceMissing);
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

void SentencePieceTokenizer::encode(std::string_view, std::vector<uint32_t>&) const {
  throw InputError(kSentencePieceMissing);
}

std::string SentencePieceTokenizer::decode(std::span<const uint32_t>) const { throw InputError(kSentencePieceMissing); }

std::vector<std::string_view> SentencePieceTokenizer::parts(std::string_view) const {
  throw InputError(kSentencePieceMissing);
}

void SentencePieceTokenizer::encode_whole(std::string_view, std::vector<uint32_t>&) const {
  throw InputError(kSentencePieceMissing);
}

nlohmann::json SentencePieceTokenizer::identity() const { throw InputError(kSentencePieceMissing); }

SentencePieceModel train_sentencepiece(const SentencePieceTrainOptions&) {
  throw InputError(std::string("tokenizer train: ") + kSentencePieceMissing);
}

#endif

}  // namespace natsl
