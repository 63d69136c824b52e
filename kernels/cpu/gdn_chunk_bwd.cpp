// Chunked GDN backward on the CPU (gdn-algorithm.md §4), with the NAtS-L state-write mask m and its
// gradient (natsl-layer.md §4.2). Per (sequence, v head):
//   1. recompute w, u (from the saved gamma and T), the chunk states h_n and v_new (forward pass (d));
//   2. reverse state pass: with dh = dL/dh_{n+1} (the state leaving chunk n, dht for the last one),
//        dv2 = m_n diag(tail) K dh + dv_local,   dv_local = scale (M o Gamma o Q K^T)^T dO
//        dm_n = <dh, W_n> = sum_i tail_i k_i^T dh v_new_i
//        dh  <- e_L dh + scale (diag(e) Q)^T dO - w^T dv2       (= dL/dh_n; dh0 after the first chunk)
//   3. per chunk: dq, dk, dgamma from the output and the state write, then the WY backward, then
//      dg = reverse cumsum of dgamma within the chunk.
#include "kernels/cpu/gdn_common.h"
#include "kernels/cpu/parallel.h"

namespace natsl::kernels::cpu {
namespace {

// Everything the per-chunk gradient step needs from the recompute and the reverse pass.
template <class A>
struct ChunkState {
  gdn::Chunk<A> ch;
  gdn::Mat<A> t, w, v_new;
  gdn::Mat<A> h_in;    // h_n, the state entering the chunk
  gdn::Mat<A> dh_out;  // dL/dh_{n+1}, the gradient of the state leaving it
  gdn::Mat<A> dv2;     // total dL/dv_new
  gdn::Mat<A> dout;    // dO rows of the chunk
  A m = 1;
};

template <class A>
struct ChunkGrads {
  gdn::Mat<A> dq, dk, dv;
  gdn::Vec<A> dbeta, dgamma;
};

// Step 3 for one chunk (gdn-algorithm.md §4 steps 4-5; the mask enters only through dk_inter).
template <class A>
ChunkGrads<A> chunk_grads(const ChunkState<A>& st, A scale) {
  using gdn::Mat;
  using gdn::Vec;
  const gdn::Chunk<A>& c = st.ch;
  const int64_t L = c.L;
  ChunkGrads<A> r;

  // Output and state-write terms.
  const Mat<A> dw = -(st.dv2 * st.h_in.transpose());
  const Mat<A> dS = scale * (st.dout * st.v_new.transpose()).cwiseProduct(c.Gamma);  // Gamma is causal
  const Mat<A> dk_inter = st.m * (c.tail.asDiagonal() * (st.v_new * st.dh_out.transpose()));
  r.dq = scale * (c.e.asDiagonal() * (st.dout * st.h_in.transpose())) + dS * c.Kc;
  r.dk = dk_inter + dS.transpose() * c.Q;
  r.dgamma = r.dq.cwiseProduct(c.Q).rowwise().sum() - r.dk.cwiseProduct(c.Kc).rowwise().sum();
  r.dgamma(L - 1) += c.e_last() * st.h_in.cwiseProduct(st.dh_out).sum() + dk_inter.cwiseProduct(c.Kc).sum();

  // WY backward: w = T X, u = T Y with X = diag(beta e) K, Y = diag(beta) V, du = dv2.
  const Vec<A> be = c.beta.cwiseProduct(c.e);
  const Mat<A> X = be.asDiagonal() * c.Kc;
  const Mat<A> Y = c.beta.asDiagonal() * c.Vc;
  const Mat<A> dX = st.t.transpose() * dw;
  const Mat<A> dY = st.t.transpose() * st.dv2;
  r.dk += be.asDiagonal() * dX;
  r.dbeta = c.e.cwiseProduct(dX.cwiseProduct(c.Kc).rowwise().sum()) + dY.cwiseProduct(c.Vc).rowwise().sum();
  r.dgamma += dX.cwiseProduct(X).rowwise().sum();
  r.dv = c.beta.asDiagonal() * dY;

  // Through T = (I + A)^-1: dA = -T^T StrictLower(dT) T^T, then A_ij = beta_i (k_i . k_j) Gamma_ij.
  Mat<A> dT = (dw * X.transpose() + st.dv2 * Y.transpose()).template triangularView<Eigen::StrictlyLower>();
  const Mat<A> dA = -(st.t.transpose() * dT * st.t.transpose());
  const Mat<A> KK = c.Kc * c.Kc.transpose();
  Mat<A> dB = Mat<A>::Zero(L, L);  // gradient w.r.t. beta_i (k_i . k_j), strictly lower
  Mat<A> dA_A = Mat<A>::Zero(L, L);  // dA o A, for the gamma row/column sums
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < i; ++j) {
      dB(i, j) = dA(i, j) * c.Gamma(i, j);
      dA_A(i, j) = dA(i, j) * c.beta(i) * KK(i, j) * c.Gamma(i, j);
    }
  r.dbeta += dB.cwiseProduct(KK).rowwise().sum();
  r.dk += c.beta.asDiagonal() * (dB * c.Kc) + dB.transpose() * (c.beta.asDiagonal() * c.Kc);
  r.dgamma += dA_A.rowwise().sum() - dA_A.colwise().sum().transpose();
  return r;
}

template <class D>
void chunk_bwd(const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved, const Tensor& dout,
               const Tensor& dht, const GdnGrads& grads) {
  using A = acc_t<D>;
  using gdn::Mat;
  using gdn::Vec;
  const GdnShape s = GdnShape::of(in.q, in.v, args);
  // Named pointers, not a structured binding: clang < 16 cannot capture bindings in the lambda below.
  const gdn::InputPtrs<D> in_ptrs(in);
  [[maybe_unused]] const D *q = in_ptrs.q, *k = in_ptrs.k, *v = in_ptrs.v;
  [[maybe_unused]] const acc_t<D> *beta = in_ptrs.beta, *h0 = in_ptrs.h0, *mask = in_ptrs.mask;  // g: only its cumsum is needed
  const A* g_cumsum = saved.g_cumsum.data<A>();
  const D* a_inv = saved.a_inv.data<D>();
  const D* dO = dout.data<D>();
  const A* dht_p = dht.defined() ? dht.data<A>() : nullptr;
  A* dg = grads.dg.data<A>();
  A* dbeta = grads.dbeta.data<A>();
  A* dm = grads.dmask.defined() ? grads.dmask.data<A>() : nullptr;
  D* dv = grads.dv.data<D>();
  const A scale = A(args.scale);
  const std::vector<GdnSequence> seqs = gdn_sequences(s, args);

  // dq, dk are summed over the v heads that share a q/k head: accumulate in A, store once.
  std::vector<A> dq_acc(size_t(in.q.numel()), A(0)), dk_acc(size_t(in.k.numel()), A(0));

  // Sequences own disjoint tokens, states and chunks (dq/dk sums run over the v heads of one sequence):
  // one thread per block of sequences.
  parallel_for(s.N, [&](int64_t n) {
    const GdnSequence& seq = seqs[size_t(n)];
    for (int64_t hv = 0; hv < s.HV; ++hv) {
      const gdn::HeadIndex ix{s, seq.batch, hv};
      auto gate_at = [&](int64_t t) { return ix.gate(t); };
      auto vo_at = [&](int64_t t) { return ix.vo(t); };
      auto qk_at = [&](int64_t t) { return ix.qk(t); };
      const int64_t NCs = seq.chunks();
      std::vector<ChunkState<A>> chunks(static_cast<size_t>(NCs));

      // 1. Recompute w, u, h_n and v_new.
      Mat<A> h = gdn::load_state<A>(h0, ix.state(n), s);
      for (int64_t c = 0; c < NCs; ++c) {
        ChunkState<A>& st = chunks[size_t(c)];
        const int64_t t0 = seq.start + c * kGdnChunk, L = std::min(kGdnChunk, seq.start + seq.len - t0);
        st.ch = gdn::load_chunk(ix, q, k, v, beta, t0, L);
        gdn::set_decay(st.ch, gdn::load_gates<A>(g_cumsum, gate_at, t0, L));
        st.t = Mat<A>(L, L);
        for (int64_t i = 0; i < L; ++i)
          for (int64_t j = 0; j < L; ++j) st.t(i, j) = convert<A>(a_inv[ix.a_inv(t0 + i) + j]);
        gdn::WY<A> wy = gdn::wy(st.ch, st.t);
        st.w = std::move(wy.w);
        st.h_in = h;
        st.v_new = wy.u - st.w * h;
        st.m = mask ? mask[ix.chunk(seq.first_chunk + c)] : A(1);
        st.dout = gdn::load_rows<A>(dO, vo_at, t0, L, s.V);
        h = st.ch.e_last() * h + st.m * gdn::state_write(st.ch, st.v_new);
      }

      // 2. Reverse state pass.
      Mat<A> dh = gdn::load_state<A>(dht_p, ix.state(n), s);
      for (int64_t c = NCs - 1; c >= 0; --c) {
        ChunkState<A>& st = chunks[size_t(c)];
        const gdn::Chunk<A>& ch = st.ch;
        st.dh_out = dh;
        const Mat<A> dv_local = scale * (gdn::causal_scores(ch).transpose() * st.dout);
        const Mat<A> k_dh = ch.tail.asDiagonal() * (ch.Kc * dh);  // dL/dv_new through W, before m
        st.dv2 = st.m * k_dh + dv_local;
        if (dm) dm[ix.chunk(seq.first_chunk + c)] = k_dh.cwiseProduct(st.v_new).sum();
        dh = ch.e_last() * dh + scale * ((ch.e.asDiagonal() * ch.Q).transpose() * st.dout) -
             st.w.transpose() * st.dv2;
      }
      if (grads.dh0.defined()) gdn::store_state(dh, grads.dh0.data<A>(), ix.state(n));

      // 3. Per-chunk gradients.
      for (const ChunkState<A>& st : chunks) {
        const ChunkGrads<A> r = chunk_grads(st, scale);
        const int64_t t0 = st.ch.t0, L = st.ch.L;
        gdn::store_rows(r.dv, dv, vo_at, t0);
        A suffix = 0;  // dg_t = sum of dgamma_i over i >= t in the chunk
        for (int64_t i = L - 1; i >= 0; --i) {
          suffix += r.dgamma(i);
          dg[ix.gate(t0 + i)] = suffix;
          dbeta[ix.gate(t0 + i)] = r.dbeta(i);
        }
        for (int64_t i = 0; i < L; ++i)
          for (int64_t j = 0; j < s.K; ++j) {
            dq_acc[size_t(qk_at(t0 + i) + j)] += r.dq(i, j);
            dk_acc[size_t(qk_at(t0 + i) + j)] += r.dk(i, j);
          }
      }
    }
  });
  D* dq = grads.dq.data<D>();
  D* dk = grads.dk.data<D>();
  for (size_t i = 0; i < dq_acc.size(); ++i) {
    dq[i] = convert<D>(dq_acc[i]);
    dk[i] = convert<D>(dk_acc[i]);
  }
}

}  // namespace

void gdn_chunk_bwd(const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved, const Tensor& dout,
                   const Tensor& dht, const GdnGrads& grads) {
  fix_eigen_blocking();
  NATSL_DISPATCH_FLOAT(in.q.dtype(), D, [&] { chunk_bwd<D>(args, in, saved, dout, dht, grads); });
}

}  // namespace natsl::kernels::cpu
