// Every slimformer op schema, in one place. Implementations register per device in their method folders
// (TORCH_LIBRARY_IMPL), and the fake (meta) implementations live beside the Python wrappers in
// python/slimformer/ops.py.
#include <Python.h>
#include <torch/library.h>

#include "common/cpu_isa.h"

namespace slimformer {
namespace {
std::string cpu_isa_op() { return cpu_isa_name(active_cpu_isa()); }
std::string cpu_features_op() { return cpu_feature_summary(); }
}  // namespace
}  // namespace slimformer

TORCH_LIBRARY(slimformer, m) {
  // y[..., N] = x[..., K] @ W + bias, W given in the tiled GPTQ kernel layout (csrc/gptq/gptq_cpu.h). perm, when
  // given, is the act-order row order: the kernel reads x[..., perm].
  m.def(
      "gptq_gemm(Tensor x, Tensor qtiles, Tensor scale_zero, Tensor? perm, Tensor? bias, int bits, int group_size, "
      "int in_features, int out_features) -> Tensor");
  // As gptq_gemm, with the activations quantized to int8 per row and block of up to 128 values (the opt-in int8
  // activation mode, 4-bit weights, CPU only; csrc/gptq/gptq_cpu.h, SmallMA8Args).
  m.def(
      "gptq_gemm_a8(Tensor x, Tensor qtiles, Tensor scale_zero, Tensor? perm, Tensor? bias, int bits, "
      "int group_size, int in_features, int out_features) -> Tensor");
  // W [K, N] in kernel row order, float32.
  m.def(
      "gptq_dequantize(Tensor qtiles, Tensor scale_zero, int bits, int group_size, int in_features, "
      "int out_features) -> Tensor");
  // Unpacks `count` values per column of int32 words [W, C] with the shared decode header (a test hook).
  m.def("_unpack_bits(Tensor words, int bits, int count) -> Tensor");
  // y[..., N] = x[..., K] @ W^T + bias for a 2:4 sparse W [N, K] in the compressed-tensors sparse-24-bitmask
  // layout: values [N, K/2] (float32 or bfloat16), bitmask uint8 [N, ceil(K/8)] (csrc/sparse24/sparse24_cpu.h).
  m.def("sparse24_gemm(Tensor x, Tensor values, Tensor bitmask, Tensor? bias, int in_features) -> Tensor");
  // The same for 2:4 + int4 in its kernel layout: tiles uint8 [ceil(N/4), ceil(K/128) * 192] (codes and positions
  // of 4 rows x 128 inputs), scales [N, groups] and zeros uint8 [N, groups] per group_size input columns (-1: one
  // group) (csrc/sparse24/sparse24_cpu.h; python/slimformer/sparse24/format.py pack_int4_tiles).
  m.def(
      "sparse24_int4_gemm(Tensor x, Tensor tiles, Tensor scales, Tensor zeros, Tensor? bias, int in_features, "
      "int group_size) -> Tensor");
  // The CUDA tensor-core 2:4 kernel's register gathers run on the CPU around an emulation of mma.sp (a test hook;
  // csrc/sparse24/sparse24_mma_emulate.cpp). x and values both bfloat16 or both float16.
  m.def("_sparse24_mma_emulate(Tensor x, Tensor values, Tensor bitmask, Tensor? bias, int in_features) -> Tensor");
  // Token-pruned attention: q, k, v float32 [B, N, H, D] (d contiguous, other strides free); key_bias float32
  // [B, N] added to every score of a key (-inf masks a pad, which also gives no importance as a query); keep int64
  // [B, N'] the tokens that take part (their rows are read in place); head_weights [B, H] weight the heads in the
  // averaged probabilities. Returns out [B, N', H, D] (empty unless need_out), importance [B, H, N'] (attention
  // each token receives from the real queries, per head; without need_out the heads of weight 0 are skipped and
  // their rows are 0) and, if need_probs, the head-averaged probabilities [B, N', N'] (else an empty tensor).
  // csrc/tokens/tokens_cpu.h.
  m.def(
      "token_attention(Tensor q, Tensor k, Tensor v, Tensor? key_bias, Tensor? keep, Tensor? head_weights, "
      "bool need_out, bool need_probs) -> (Tensor, Tensor, Tensor)");
  // Zero-TPrune's attention pass: token_attention's out and per-head importance, the head filter on that importance
  // (per sequence, the heads whose variance of received attention over the real tokens lies within the [low, high]
  // quantiles: slimformer.tokens.algorithms.head_filter) and the mean of the kept heads' probabilities, in one pass.
  // Returns (out [B, N', H, D], importance [B, H, N'], probs [B, N', N'], head weights [B, H] in {0, 1}) (CPU).
  m.def(
      "token_attention_head_filtered(Tensor q, Tensor k, Tensor v, Tensor? key_bias, Tensor? keep, float low, "
      "float high) -> (Tensor, Tensor, Tensor, Tensor)");
  // Zero-TPrune's weighted PageRank: `iterations` times s <- attn^T s per sequence, attn float32 [B, N, N] (rows:
  // queries; row stride free), s float32 [B, N] the start; returns the result (CPU; csrc/tokens/tokens_cpu.h).
  m.def("wpr(Tensor attn, Tensor s, int iterations) -> Tensor");
  // A contiguous copy of a CPU tensor on 2 MiB-aligned memory advised as transparent huge pages (Linux; elsewhere
  // or below 2 MiB a plain copy): where the modules keep their packed weights (csrc/common/hugepage_ops.cpp).
  m.def("cpu_hugepage_copy(Tensor t) -> Tensor");
  m.def("cpu_isa() -> str", &slimformer::cpu_isa_op);
  m.def("cpu_features() -> str", &slimformer::cpu_features_op);
}

// `import slimformer._C` loads this library, which registers the ops above; the module itself is empty.
extern "C" PyObject* PyInit__C() {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "slimformer native ops (see torch.ops.slimformer)", -1,
                               nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
