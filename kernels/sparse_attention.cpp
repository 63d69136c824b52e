#include "kernels/sparse_attention.h"

#include <vector>

#include "kernels/dispatch.h"
#include "kernels/nn.h"  // stat_dtype

namespace natsl::kernels {
namespace {

struct Dims {
  int64_t B, T, Ha, Dk, Dv, Hr, NC;
};

// Checks the shapes of q, k, v and the index against each other; returns the sizes.
Dims check_inputs(const SparseAttentionIndex& index, const Tensor& q, const Tensor& k, const Tensor& v,
                  const char* op) {
  NATSL_CHECK(q.dim() == 4 && v.dim() == 4, op, ": q and v must be [B, T, H, D], got ", q.str(), " and ", v.str());
  check_same_shape(q, k, op);
  Dims d{q.size(0), q.size(1), q.size(2), q.size(3), v.size(3), 0, 0};
  NATSL_CHECK(v.size(0) == d.B && v.size(1) == d.T && v.size(2) == d.Ha, op, ": v ", v.str(), " for q ", q.str());
  NATSL_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype() && is_floating(q.dtype()), op,
              ": q, k, v need one floating dtype");
  NATSL_CHECK(index.chunks.defined() && index.prefix.defined(), op, ": empty selection index");
  NATSL_CHECK(index.chunk_size > 0, op, ": chunk size ", index.chunk_size);
  d.Hr = index.router_heads();
  d.NC = index.num_chunks();
  NATSL_CHECK(index.batch() == d.B, op, ": index batch ", index.batch(), " for B = ", d.B);
  NATSL_CHECK(d.Hr > 0 && d.Ha % d.Hr == 0, op, ": ", d.Ha, " softmax heads do not split over ", d.Hr,
              " router heads");
  NATSL_CHECK(d.NC == (d.T + index.chunk_size - 1) / index.chunk_size, op, ": index has ", d.NC,
              " chunks for T = ", d.T, " and chunk size ", index.chunk_size);
  NATSL_CHECK(index.chunks.dtype() == DType::i32 && index.prefix.dtype() == DType::i32 &&
                  index.prefix.shape() == Shape({d.B, d.Hr, d.NC + 1}),
              op, ": bad index tensors ", index.chunks.str(), ", ", index.prefix.str());
  return d;
}

void check_stat(const Tensor& t, const Shape& shape, DType data, const char* what, const char* op) {
  NATSL_CHECK(t.shape() == shape && t.dtype() == stat_dtype(data), op, ": ", what, " must be ", shape_str(shape),
              " ", dtype_name(stat_dtype(data)), ", got ", t.str());
}

}  // namespace

SparseAttentionIndex sparse_attention_index(const Tensor& softmax_mask, int64_t chunk_size) {
  NATSL_CHECK(softmax_mask.dim() == 3 && is_floating(softmax_mask.dtype()),
              "sparse_attention_index: mask must be floating [B, NC, Hr], got ", softmax_mask.str());
  check_contiguous({&softmax_mask}, "sparse_attention_index");
  int64_t B = softmax_mask.size(0), NC = softmax_mask.size(1), Hr = softmax_mask.size(2);
  Device d = softmax_mask.device();
  SparseAttentionIndex index{Tensor::empty({B, Hr, NC}, DType::i32, d),
                             Tensor::empty({B, Hr, NC + 1}, DType::i32, d), chunk_size};
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::sparse_attention_index(softmax_mask, index));
  else cpu::sparse_attention_index(softmax_mask, index);
  return index;
}

SparseAttentionIndex sparse_attention_index_all(int64_t B, int64_t Hr, int64_t NC, int64_t chunk_size, bool selected,
                                                Device d) {
  Tensor mask = Tensor::full({B, NC, Hr}, selected ? 1.0 : 0.0, DType::f32);
  SparseAttentionIndex index = sparse_attention_index(mask, chunk_size);
  if (!d.is_cpu()) {
    index.chunks = index.chunks.to(d);
    index.prefix = index.prefix.to(d);
  }
  return index;
}

void sparse_attention_fwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse) {
  const char* op = "sparse_attention_fwd";
  Device dev = common_device({&q, &k, &v, &o, &lse, &index.chunks, &index.prefix, &args.chunk_mult}, op);
  check_contiguous({&q, &k, &v, &o, &lse, &index.chunks, &index.prefix, &args.chunk_mult}, op);
  Dims d = check_inputs(index, q, k, v, op);
  check_same_shape(o, v, op);
  NATSL_CHECK(o.dtype() == q.dtype(), op, ": o dtype ", dtype_name(o.dtype()));
  check_stat(lse, {d.B, d.T, d.Ha}, q.dtype(), "lse", op);
  if (args.chunk_mult.defined()) check_stat(args.chunk_mult, {d.B, d.NC, d.Hr}, q.dtype(), "chunk_mult", op);
  if (dev.is_cuda()) {
    NATSL_CHECK(!args.chunk_mult.defined(), op, ": chunk_mult is a CPU-only test option");
    NATSL_CUDA_ONLY(cuda::sparse_attention_fwd(args, index, q, k, v, o, lse));
  } else {
    cpu::sparse_attention_fwd(args, index, q, k, v, o, lse);
  }
}

void sparse_attention_bwd(const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse, const Tensor& dout,
                          const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dm) {
  const char* op = "sparse_attention_bwd";
  Device dev = common_device(
      {&q, &k, &v, &o, &lse, &dout, &dq, &dk, &dv, &dm, &index.chunks, &index.prefix, &args.chunk_mult}, op);
  check_contiguous({&q, &k, &v, &o, &lse, &dout, &dq, &dk, &dv, &dm, &index.chunks, &index.prefix, &args.chunk_mult},
                   op);
  Dims d = check_inputs(index, q, k, v, op);
  for (const Tensor* t : {&o, &dout, &dv}) check_same_shape(*t, v, op);
  check_same_shape(dq, q, op);
  check_same_shape(dk, k, op);
  for (const Tensor* t : {&o, &dout, &dq, &dk, &dv})
    NATSL_CHECK(t->dtype() == q.dtype(), op, ": dtype of ", t->str(), " differs from q's");
  check_stat(lse, {d.B, d.T, d.Ha}, q.dtype(), "lse", op);
  if (dm.defined()) check_stat(dm, {d.B, d.NC, d.Hr}, q.dtype(), "dm", op);
  if (args.chunk_mult.defined()) check_stat(args.chunk_mult, {d.B, d.NC, d.Hr}, q.dtype(), "chunk_mult", op);
  if (dev.is_cuda()) {
    NATSL_CHECK(!args.chunk_mult.defined(), op, ": chunk_mult is a CPU-only test option");
    NATSL_CUDA_ONLY(cuda::sparse_attention_bwd(args, index, q, k, v, o, lse, dout, dq, dk, dv, dm));
  } else {
    cpu::sparse_attention_bwd(args, index, q, k, v, o, lse, dout, dq, dk, dv, dm);
  }
}

}  // namespace natsl::kernels
