// The oracle of the GDN kernels: the gated delta rule token by token (gdn-algorithm.md §2), and with a
// state-write mask the chunk loop of natsl-layer.md §3.4 written the obvious way.
#include "kernels/cpu/gdn_common.h"

namespace natsl::kernels::cpu {
namespace {

template <class D>
void recurrent_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht) {
  using A = acc_t<D>;
  using gdn::Mat;
  using gdn::Vec;
  const GdnShape s = GdnShape::of(in.q, in.v, args);
  const auto [q, k, v, g, beta, h0, mask] = gdn::InputPtrs<D>(in);
  D* out = o.data<D>();
  const A scale = A(args.scale);
  const std::vector<GdnSequence> seqs = gdn_sequences(s, args);

  for (int64_t n = 0; n < s.N; ++n) {
    const GdnSequence& seq = seqs[size_t(n)];
    for (int64_t hv = 0; hv < s.HV; ++hv) {
      const gdn::HeadIndex ix{s, seq.batch, hv};
      Mat<A> carried = gdn::load_state<A>(h0, ix.state(n), s);  // H: the state between chunks
      for (int64_t c = 0; c < seq.chunks(); ++c) {
        const int64_t t0 = seq.start + c * kGdnChunk, t1 = std::min(t0 + kGdnChunk, seq.start + seq.len);
        Mat<A> h = carried;  // S: runs through the chunk's tokens from the carried state
        A log_decay = 0;
        for (int64_t t = t0; t < t1; ++t) {
          const A gt = g[ix.gate(t)], bt = beta[ix.gate(t)];
          Vec<A> qt(s.K), kt(s.K), vt(s.V);
          for (int64_t i = 0; i < s.K; ++i) {
            qt(i) = convert<A>(q[ix.qk(t) + i]);
            kt(i) = convert<A>(k[ix.qk(t) + i]);
          }
          for (int64_t j = 0; j < s.V; ++j) vt(j) = convert<A>(v[ix.vo(t) + j]);
          h *= std::exp(gt);                                  // decay first
          Vec<A> u = bt * (vt - h.transpose() * kt);          // delta against the decayed state
          h += kt * u.transpose();                            // rank-1 write
          Vec<A> ot = scale * (h.transpose() * qt);           // read after the write
          for (int64_t j = 0; j < s.V; ++j) out[ix.vo(t) + j] = convert<D>(ot(j));
          log_decay += gt;
        }
        // Commit the chunk with weight m: m = 1 keeps S, m = 0 only decays H through the chunk.
        const A m = mask ? mask[ix.chunk(seq.first_chunk + c)] : A(1);
        if (m == A(1)) carried = h;
        else carried = m * h + (A(1) - m) * std::exp(log_decay) * carried;
      }
      if (ht.defined()) gdn::store_state(carried, ht.data<A>(), ix.state(n));
    }
  }
}

}  // namespace

void gdn_recurrent_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht) {
  NATSL_DISPATCH_FLOAT(in.q.dtype(), D, [&] { recurrent_fwd<D>(args, in, o, ht); });
}

}  // namespace natsl::kernels::cpu
