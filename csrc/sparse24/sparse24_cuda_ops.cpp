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

// The tensor cores take x and the values when both are bf16 or both fp16 on an sm_80+ device.
bool tensor_core_route(const at::Tensor& x, const at::Tensor& values) {
  const auto dt = x.scalar_type();
  if ((dt != at::kBFloat16 && dt != at::kHalf) || values.scalar_type() != dt) return false;
  int major = 0;
  return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.device().index()) == cudaSuccess &&
         major >= 8;
}

// The kernels read pairs of 16-bit elements as 32-bit words: a tensor whose data starts off a 4-byte boundary (a
// view with an odd offset) is copied.
at::Tensor aligned4(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 4 == 0 ? t : t.clone();
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

at::Tensor sparse24_gemm_cuda(const at::Tensor& x, const at::Tensor& values_in, const at::Tensor& bitmask_in,
                              const c10::optional<at::Tensor>& bias, int64_t in_features) {
  const int64_t K = in_features;
  check_inputs(x, values_in, bitmask_in, bias, K, /*half_values=*/true);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor values = values_in.contiguous(), bitmask = bitmask_in.contiguous();
  const int64_t N = values.size(0), M = x.numel() / K;
  const std::vector<int64_t> out_shape = output_shape(x, N);
  at::Tensor y = at::empty(out_shape, x.options());
  if (M == 0) return y;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  if (M <= kCudaSparseMaxRows) {
    const bool has_bias = bias.has_value() && bias->defined();
    const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    if (tensor_core_route(x2, values)) {
      const at::Tensor xa = aligned4(x2), va = aligned4(values);
      check_cuda(launch_mma_sp(xa.data_ptr(), va.data_ptr(), xa.scalar_type() == at::kBFloat16,
                               bitmask.data_ptr<uint8_t>(), has_bias ? b.data_ptr() : nullptr,
                               has_bias ? cuda_dtype(b) : CudaDType::kFloat32, y.data_ptr(), cuda_dtype(y), M, K, N,
                               stream),
                 "sparse24 tensor-core kernel");
      return y;
    }
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

// 2:4 + int4: the tiles unpacked into kept values (in x's dtype) and a bitmask, then the 2:4 path above.
at::Tensor sparse24_int4_gemm_cuda(const at::Tensor& x, const at::Tensor& tiles_in, const at::Tensor& scales_in,
                                   const at::Tensor& zeros_in, const c10::optional<at::Tensor>& bias,
                                   int64_t in_features, int64_t group_size) {
  const int64_t K = in_features;
  const int64_t gs = check_int4_inputs(x, tiles_in, scales_in, zeros_in, bias, K, group_size);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor tiles = tiles_in.contiguous(), scales = scales_in.contiguous(), zeros = zeros_in.contiguous();
  const int64_t N = scales.size(0);
  const at::Tensor values = at::empty({N, K / 2}, x.options());
  const at::Tensor bitmask = at::empty({N, (K + 7) / 8}, x.options().dtype(at::kByte));
  check_cuda(launch_unpack_int4(tiles.data_ptr<uint8_t>(), scales.data_ptr(), cuda_dtype(scales),
                                zeros.data_ptr<uint8_t>(), values.data_ptr(), cuda_dtype(values),
                                bitmask.data_ptr<uint8_t>(), K, N, gs, scales.size(1),
                                c10::cuda::getCurrentCUDAStream()),
             "sparse24 int4 unpack kernel");
  return sparse24_gemm_cuda(x, values, bitmask, bias, in_features);
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CUDA, m) {
  m.impl("sparse24_gemm", &sparse24_gemm_cuda);
  m.impl("sparse24_int4_gemm", &sparse24_int4_gemm_cuda);
}

}  // namespace sparse24
}  // namespace slimformer
