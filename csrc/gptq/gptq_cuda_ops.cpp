// CUDA implementations of the slimformer GPTQ ops (built only when the installed torch has CUDA): checks, the
// fused small-M kernel or dequantize + cuBLAS for large M, on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "gptq/gptq_cuda.h"
#include "gptq/gptq_ops_common.h"

namespace slimformer {
namespace gptq {
namespace {

CudaDType cuda_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return CudaDType::kFloat32;
    case at::kHalf: return CudaDType::kFloat16;
    case at::kBFloat16: return CudaDType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be float16, bfloat16 or float32 on CUDA, got ", c10::toString(t.scalar_type()));
  }
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

at::Tensor gptq_gemm_cuda(const at::Tensor& x, const at::Tensor& qtiles, const at::Tensor& scale_zero,
                          const c10::optional<at::Tensor>& perm, const c10::optional<at::Tensor>& bias, int64_t bits,
                          int64_t group_size, int64_t in_features, int64_t out_features) {
  const TiledWeight w = check_tiled_weight(qtiles, scale_zero, bits, group_size, in_features, out_features);
  const CudaDType xdt = cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(qtiles.device());
  const at::Tensor x2 = prepare_activations(x, perm, bias, in_features, out_features, qtiles.device());
  const int64_t M = x2.numel() / in_features;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor y;
  if (M <= kCudaFusedMaxRows) {
    at::Tensor y32 = at::zeros({M, out_features}, x2.options().dtype(at::kFloat));
    check_cuda(launch_small_m_gemm(x2.data_ptr(), xdt, w, M, y32.data_ptr<float>(), stream), "gptq small-M kernel");
    y = at::empty({M, out_features}, x2.options());
    const bool has_bias = bias.has_value() && bias->defined();
    const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    check_cuda(launch_finalize(y32.data_ptr<float>(), has_bias ? b.data_ptr() : nullptr,
                               has_bias ? cuda_dtype(b, "bias") : CudaDType::kFloat32, y.data_ptr(), xdt, M,
                               out_features, stream),
               "gptq finalize kernel");
  } else {
    at::Tensor wfull = at::empty({in_features, out_features}, x2.options());
    check_cuda(launch_dequantize(w, wfull.data_ptr(), xdt, stream), "gptq dequantize kernel");
    y = at::mm(x2.reshape({M, in_features}), wfull);
    if (bias.has_value() && bias->defined()) y.add_(bias->to(y.scalar_type()));
  }
  return y.reshape(output_shape(x, out_features));
}

at::Tensor gptq_dequantize_cuda(const at::Tensor& qtiles, const at::Tensor& scale_zero, int64_t bits,
                                int64_t group_size, int64_t in_features, int64_t out_features) {
  const TiledWeight w = check_tiled_weight(qtiles, scale_zero, bits, group_size, in_features, out_features);
  const c10::cuda::CUDAGuard guard(qtiles.device());
  at::Tensor out = at::empty({in_features, out_features}, scale_zero.options().dtype(at::kFloat));
  check_cuda(launch_dequantize(w, out.data_ptr(), CudaDType::kFloat32, c10::cuda::getCurrentCUDAStream()),
             "gptq dequantize kernel");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CUDA, m) {
  m.impl("gptq_gemm", &gptq_gemm_cuda);
  m.impl("gptq_dequantize", &gptq_dequantize_cuda);
}

}  // namespace gptq
}  // namespace slimformer
