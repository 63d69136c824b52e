// Chunked GDN forward on the CPU (gdn-algorithm.md §3), with the NAtS-L state-write mask as one multiplier
// in the state update. Per (sequence, v head) and chunk, in the order the CUDA kernels split the work:
//   (a) gamma = local cumsum of g                                  chunk-parallel
//   (b) A, T = (I + A)^-1                                          chunk-parallel
//   (c) w = T diag(beta e) K, u = T diag(beta) V                   chunk-parallel
//   (d) v_new = u - w h_n;  h_{n+1} = e_L h_n + m_n K^T diag(tail) v_new      sequential over chunks
//   (e) o = scale (diag(e) Q h_n + (M o Gamma o Q K^T) v_new)     chunk-parallel given h_n
#include "kernels/cpu/gdn_common.h"
#include "kernels/cpu/parallel.h"

namespace natsl::kernels::cpu {
namespace {

template <class D>
void chunk_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht, const GdnSaved& saved) {
  using A = acc_t<D>;
  using gdn::Mat;
  using gdn::Vec;
  const GdnShape s = GdnShape::of(in.q, in.v, args);
  // Named pointers, not a structured binding: clang < 16 cannot capture bindings in the lambda below.
  const gdn::InputPtrs<D> in_ptrs(in);
  [[maybe_unused]] const D *q = in_ptrs.q, *k = in_ptrs.k, *v = in_ptrs.v;
  [[maybe_unused]] const acc_t<D> *g = in_ptrs.g, *beta = in_ptrs.beta, *h0 = in_ptrs.h0, *mask = in_ptrs.mask;
  A* g_cumsum = saved.g_cumsum.defined() ? saved.g_cumsum.data<A>() : nullptr;
  D* a_inv = saved.a_inv.defined() ? saved.a_inv.data<D>() : nullptr;
  D* out = o.data<D>();
  const A scale = A(args.scale);
  const std::vector<GdnSequence> seqs = gdn_sequences(s, args);

  // Sequences own disjoint tokens, states and chunks: one thread per block of sequences.
  parallel_for(s.N, [&](int64_t n) {
    const GdnSequence& seq = seqs[size_t(n)];
    for (int64_t hv = 0; hv < s.HV; ++hv) {
      const gdn::HeadIndex ix{s, seq.batch, hv};
      auto gate_at = [&](int64_t t) { return ix.gate(t); };
      Mat<A> h = gdn::load_state<A>(h0, ix.state(n), s);
      for (int64_t c = 0; c < seq.chunks(); ++c) {
        const int64_t t0 = seq.start + c * kGdnChunk, L = std::min(kGdnChunk, seq.start + seq.len - t0);
        gdn::Chunk<A> ch = gdn::load_chunk(ix, q, k, v, beta, t0, L);
        gdn::set_decay(ch, gdn::local_cumsum(gdn::load_gates<A>(g, gate_at, t0, L)));
        const Mat<A> t = gdn::unit_lower_inverse(gdn::strict_lower_a(ch));
        const gdn::WY<A> wy = gdn::wy(ch, t);

        const Mat<A> v_new = wy.u - wy.w * h;
        const Mat<A> o_chunk = scale * (ch.e.asDiagonal() * (ch.Q * h) + gdn::causal_scores(ch) * v_new);
        gdn::store_rows(o_chunk, out, [&](int64_t tt) { return ix.vo(tt); }, t0);

        const A m = mask ? mask[ix.chunk(seq.first_chunk + c)] : A(1);
        h = ch.e_last() * h + m * gdn::state_write(ch, v_new);

        if (g_cumsum)
          for (int64_t i = 0; i < L; ++i) g_cumsum[ix.gate(t0 + i)] = ch.gamma(i);
        if (a_inv)
          for (int64_t i = 0; i < L; ++i)
            for (int64_t j = 0; j < kGdnChunk; ++j) a_inv[ix.a_inv(t0 + i) + j] = convert<D>(j < L ? t(i, j) : A(0));
      }
      if (ht.defined()) gdn::store_state(h, ht.data<A>(), ix.state(n));
    }
  });
}

}  // namespace

void gdn_chunk_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht,
                   const GdnSaved& saved) {
  fix_eigen_blocking();
  NATSL_DISPATCH_FLOAT(in.q.dtype(), D, [&] { chunk_fwd<D>(args, in, o, ht, saved); });
}

}  // namespace natsl::kernels::cpu
