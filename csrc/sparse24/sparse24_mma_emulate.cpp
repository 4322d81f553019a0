// slimformer::_sparse24_mma_emulate: the tensor-core 2:4 kernel (sparse24.cu, mma_sp_kernel) run on the CPU, warp by
// warp and lane by lane, with the instruction replaced by its emulation (sparse24_mma_layout.h). The register gathers,
// the tails, the metadata conversion, the bad-row marking and the output positions are the kernel's own functions;
// only the loop over lanes and the multiply differ. A test hook: it is how CI checks the CUDA kernel's data layout on
// machines without a GPU.
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstring>
#include <limits>

#include "sparse24/sparse24_mma_layout.h"
#include "sparse24/sparse24_ops_common.h"

namespace slimformer {
namespace sparse24 {
namespace {

float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_bits_to_float(uint16_t b) { return static_cast<float>(c10::Half(b, c10::Half::from_bits())); }

at::Tensor sparse24_mma_emulate_cpu(const at::Tensor& x, const at::Tensor& values_in, const at::Tensor& bitmask_in,
                                    const c10::optional<at::Tensor>& bias, int64_t in_features) {
  const int64_t K = in_features;
  check_inputs(x, values_in, bitmask_in, bias, K, /*half_values=*/true);
  TORCH_CHECK((x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf) &&
                  values_in.scalar_type() == x.scalar_type(),
              "the tensor-core kernel takes x and values both bfloat16 or both float16, got ",
              c10::toString(x.scalar_type()), " and ", c10::toString(values_in.scalar_type()));
  const at::Tensor values = values_in.contiguous(), bitmask = bitmask_in.contiguous();
  const int64_t N = values.size(0), M = x.numel() / K;
  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  const auto* xs = static_cast<const uint16_t*>(x2.data_ptr());
  const auto* vs = static_cast<const uint16_t*>(values.data_ptr());
  const uint8_t* bm = bitmask.data_ptr<uint8_t>();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  float* out = y.data_ptr<float>();
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  for (int64_t n0 = 0; n0 < N; n0 += mma::kTileRows)  // one warp
    for (int64_t m0 = 0; m0 < M; m0 += mma::kTileCols) {  // one 8-token tile of it
      float c[32][4] = {};
      bool bad_lo[32] = {}, bad_hi[32] = {};
      for (int64_t k0 = 0; k0 < K; k0 += mma::kTileK) {
        mma::FragA a[32];
        uint32_t bregs[32][4];
        for (int lane = 0; lane < 32; ++lane) {
          a[lane] = mma::gather_a(vs, bm, N, K, n0, k0, lane);
          bad_lo[lane] |= a[lane].bad_lo;
          bad_hi[lane] |= a[lane].bad_hi;
          mma::gather_b(xs, M, K, m0, k0, lane, bregs[lane]);
        }
        const bool ok = bf16 ? mma::emulate_mma_sp(a, bregs, c, bf16_bits_to_float)
                             : mma::emulate_mma_sp(a, bregs, c, f16_bits_to_float);
        TORCH_CHECK(ok, "the gathered metadata holds a group whose first position is not below its second (undefined on the hardware)");
      }
      for (int lane = 0; lane < 32; ++lane) {
        bool quad_lo = false, quad_hi = false;  // the kernel's shuffle-OR over the lane's quad
        for (int q = lane & ~3; q < (lane & ~3) + 4; ++q) {
          quad_lo |= bad_lo[q];
          quad_hi |= bad_hi[q];
        }
        for (int i = 0; i < 4; ++i) {
          int row, token;
          mma::c_position(lane, i, row, token);
          const int64_t n = n0 + row, m = m0 + token;
          if (n >= N || m >= M) continue;
          float v = (row < 8 ? quad_lo : quad_hi) ? std::numeric_limits<float>::quiet_NaN() : c[lane][i];
          if (b.defined()) v += b.data_ptr<float>()[n];
          out[m * N + n] = v;
        }
      }
    }
  return y.to(x.scalar_type()).view(output_shape(x, N));
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CPU, m) { m.impl("_sparse24_mma_emulate", &sparse24_mma_emulate_cpu); }

}  // namespace sparse24
}  // namespace slimformer
