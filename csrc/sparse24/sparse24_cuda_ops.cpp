// CUDA implementation of slimformer::sparse24_gemm (built only when the installed torch has CUDA): checks, the sparse
// kernel for small M or decompression + cuBLAS for large M, on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "sparse24/sparse24_cuda.h"
#include "sparse24/sparse24_ops_common.h"

namespace slimformer {
namespace sparse24 {
namespace {

CudaDType cuda_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return CudaDType::kFloat16;
    case at::kBFloat16: return CudaDType::kBFloat16;
    default: return CudaDType::kFloat32;
  }
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

at::Tensor sparse24_gemm_cuda(const at::Tensor& x, const at::Tensor& values_in, const at::Tensor& bitmask_in,
                              const c10::optional<at::Tensor>& bias, int64_t in_features) {
  const int64_t K = in_features;
  check_inputs(x, values_in, bitmask_in, bias, K);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor values = values_in.contiguous(), bitmask = bitmask_in.contiguous();
  const int64_t N = values.size(0), M = x.numel() / K;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty(out_shape, x.options());
  if (M == 0) return y;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  if (M <= kCudaSparseMaxRows) {
    const bool has_bias = bias.has_value() && bias->defined();
    const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    check_cuda(launch_gemm(x2.data_ptr(), cuda_dtype(x2), values.data_ptr(), cuda_dtype(values),
                           bitmask.data_ptr<uint8_t>(), has_bias ? b.data_ptr() : nullptr,
                           has_bias ? cuda_dtype(b) : CudaDType::kFloat32, y.data_ptr(), cuda_dtype(y), M, K, N,
                           stream),
               "sparse24 kernel");
    return y;
  }
  at::Tensor dense = at::empty({N, K}, x2.options());
  check_cuda(launch_decompress(values.data_ptr(), cuda_dtype(values), bitmask.data_ptr<uint8_t>(), dense.data_ptr(),
                               cuda_dtype(dense), K, N, stream),
             "sparse24 decompress kernel");
  at::Tensor out = at::mm(x2, dense.t());
  if (bias.has_value() && bias->defined()) out.add_(bias->to(out.scalar_type()));
  return out.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CUDA, m) { m.impl("sparse24_gemm", &sparse24_gemm_cuda); }

}  // namespace sparse24
}  // namespace slimformer
