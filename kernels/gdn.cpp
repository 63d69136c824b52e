// Argument checks and device dispatch for the Gated DeltaNet kernels (kernels/gdn.h).
#include "kernels/gdn.h"

#include "kernels/dispatch.h"

namespace natsl::kernels {

GdnShape GdnShape::of(const Tensor& q, const Tensor& v, const GdnArgs& args) {
  NATSL_CHECK(q.dim() == 4 && v.dim() == 4, "gdn: q must be [B, T, H, K] and v [B, T, HV, V], got ", q.str(),
              " and ", v.str());
  GdnShape s;
  s.B = q.size(0);
  s.T = q.size(1);
  s.H = q.size(2);
  s.K = q.size(3);
  s.HV = v.size(2);
  s.V = v.size(3);
  NATSL_CHECK(v.size(0) == s.B && v.size(1) == s.T, "gdn: q ", q.str(), " and v ", v.str(), " differ in B or T");
  NATSL_CHECK(s.H > 0 && s.HV % s.H == 0, "gdn: v heads (", s.HV, ") must be a multiple of q/k heads (", s.H, ")");
  if (args.cu_seqlens.empty()) {
    s.N = s.B;
    s.NC = s.B * ((s.T + kGdnChunk - 1) / kGdnChunk);
    return s;
  }
  const auto& cu = args.cu_seqlens;
  NATSL_CHECK(s.B == 1, "gdn: packed sequences (cu_seqlens) need B = 1, got B = ", s.B);
  NATSL_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == s.T, "gdn: cu_seqlens must run from 0 to T = ",
              s.T, " with at least one sequence");
  s.N = int64_t(cu.size()) - 1;
  for (int64_t n = 0; n < s.N; ++n) {
    int64_t len = cu[n + 1] - cu[n];
    NATSL_CHECK(len >= 0, "gdn: cu_seqlens must be non-decreasing (entry ", n + 1, ")");
    s.NC += (len + kGdnChunk - 1) / kGdnChunk;
  }
  return s;
}

std::string gdn_cuda_shape_problem(int64_t K, int64_t V, DType dt) {
  if (K % kGdnChunk != 0 || K <= 0 || K > 256 || V % kGdnChunk != 0 || V <= 0)
    return detail::str("the CUDA kernels need K in {64, 128, 192, 256} and V a multiple of 64, got K = ", K, ", V = ", V);
  if (dt == DType::f32 && K > 128)
    return detail::str("the CUDA f32 path supports K <= 128 (shared memory); use bf16 for K = ", K);
  return "";
}

std::vector<GdnSequence> gdn_sequences(const GdnShape& s, const GdnArgs& args) {
  std::vector<GdnSequence> seqs(size_t(s.N));
  int64_t chunk = 0;
  for (int64_t n = 0; n < s.N; ++n) {
    GdnSequence& q = seqs[size_t(n)];
    if (args.cu_seqlens.empty()) {
      q.batch = n;
      q.start = 0;
      q.len = s.T;
    } else {
      q.start = args.cu_seqlens[size_t(n)];
      q.len = args.cu_seqlens[size_t(n) + 1] - q.start;
    }
    q.first_chunk = chunk;
    chunk += q.chunks();
  }
  return seqs;
}

namespace {

DType state_dtype(DType data) { return data == DType::f64 ? DType::f64 : DType::f32; }

void expect(const Tensor& t, const Shape& shape, DType dt, const char* name) {
  NATSL_CHECK(t.shape() == shape && t.dtype() == dt, "gdn: ", name, " must be ", shape_str(shape), " ",
              dtype_name(dt), ", got ", t.str());
}
void expect_optional(const Tensor& t, const Shape& shape, DType dt, const char* name) {
  if (t.defined()) expect(t, shape, dt, name);
}

// Checks the inputs and returns the device everything lives on.
Device check_inputs(const GdnInputs& in, const GdnShape& s, const char* op) {
  DType D = in.q.dtype(), S = state_dtype(D);
  NATSL_CHECK(D == DType::f64 || D == DType::f32 || D == DType::bf16, op, ": unsupported dtype ", dtype_name(D));
  expect(in.k, in.q.shape(), D, "k");
  expect(in.v, {s.B, s.T, s.HV, s.V}, D, "v");
  expect(in.g, {s.B, s.T, s.HV}, S, "g");
  expect(in.beta, {s.B, s.T, s.HV}, S, "beta");
  expect_optional(in.h0, {s.N, s.HV, s.K, s.V}, S, "h0");
  expect_optional(in.mask, {s.NC, s.HV}, S, "mask");
  check_contiguous({&in.q, &in.k, &in.v, &in.g, &in.beta, &in.h0, &in.mask}, op);
  return common_device({&in.q, &in.k, &in.v, &in.g, &in.beta, &in.h0, &in.mask}, op);
}

}  // namespace

void gdn_recurrent_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht) {
  GdnShape s = GdnShape::of(in.q, in.v, args);
  Device d = check_inputs(in, s, "gdn_recurrent_fwd");
  DType D = in.q.dtype(), S = state_dtype(D);
  expect(o, in.v.shape(), D, "o");
  expect_optional(ht, {s.N, s.HV, s.K, s.V}, S, "ht");
  check_contiguous({&o, &ht}, "gdn_recurrent_fwd");
  NATSL_CHECK(common_device({&in.q, &o, &ht}, "gdn_recurrent_fwd") == d, "gdn_recurrent_fwd: outputs on another device");
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::gdn_recurrent_fwd(args, in, o, ht));
  else cpu::gdn_recurrent_fwd(args, in, o, ht);
}

void gdn_chunk_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht,
                   const GdnSaved& saved) {
  GdnShape s = GdnShape::of(in.q, in.v, args);
  Device d = check_inputs(in, s, "gdn_chunk_fwd");
  DType D = in.q.dtype(), S = state_dtype(D);
  expect(o, in.v.shape(), D, "o");
  expect_optional(ht, {s.N, s.HV, s.K, s.V}, S, "ht");
  expect_optional(saved.g_cumsum, {s.B, s.T, s.HV}, S, "g_cumsum");
  expect_optional(saved.a_inv, {s.B, s.T, s.HV, kGdnChunk}, D, "a_inv");
  check_contiguous({&o, &ht, &saved.g_cumsum, &saved.a_inv}, "gdn_chunk_fwd");
  NATSL_CHECK(common_device({&in.q, &o, &ht, &saved.g_cumsum, &saved.a_inv}, "gdn_chunk_fwd") == d,
              "gdn_chunk_fwd: outputs on another device");
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::gdn_chunk_fwd(args, in, o, ht, saved));
  else cpu::gdn_chunk_fwd(args, in, o, ht, saved);
}

void gdn_chunk_bwd(const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved, const Tensor& dout,
                   const Tensor& dht, const GdnGrads& grads) {
  GdnShape s = GdnShape::of(in.q, in.v, args);
  Device d = check_inputs(in, s, "gdn_chunk_bwd");
  DType D = in.q.dtype(), S = state_dtype(D);
  expect(saved.g_cumsum, {s.B, s.T, s.HV}, S, "g_cumsum");
  expect(saved.a_inv, {s.B, s.T, s.HV, kGdnChunk}, D, "a_inv");
  expect(dout, in.v.shape(), D, "dout");
  expect_optional(dht, {s.N, s.HV, s.K, s.V}, S, "dht");
  expect(grads.dq, in.q.shape(), D, "dq");
  expect(grads.dk, in.k.shape(), D, "dk");
  expect(grads.dv, in.v.shape(), D, "dv");
  expect(grads.dg, in.g.shape(), S, "dg");
  expect(grads.dbeta, in.beta.shape(), S, "dbeta");
  expect_optional(grads.dh0, {s.N, s.HV, s.K, s.V}, S, "dh0");
  NATSL_CHECK(!grads.dmask.defined() || in.mask.defined(), "gdn_chunk_bwd: dmask requested without a mask");
  expect_optional(grads.dmask, {s.NC, s.HV}, S, "dmask");
  check_contiguous({&saved.g_cumsum, &saved.a_inv, &dout, &dht, &grads.dq, &grads.dk, &grads.dv, &grads.dg,
                    &grads.dbeta, &grads.dh0, &grads.dmask},
                   "gdn_chunk_bwd");
  NATSL_CHECK(common_device({&in.q, &saved.g_cumsum, &saved.a_inv, &dout, &dht, &grads.dq, &grads.dk, &grads.dv,
                             &grads.dg, &grads.dbeta, &grads.dh0, &grads.dmask},
                            "gdn_chunk_bwd") == d,
              "gdn_chunk_bwd: tensors on another device");
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::gdn_chunk_bwd(args, in, saved, dout, dht, grads));
  else cpu::gdn_chunk_bwd(args, in, saved, dout, dht, grads);
}

}  // namespace natsl::kernels
