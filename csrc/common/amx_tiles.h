// What the AMX kernels share (sparse24_cpu_amx.h, gptq_cpu_amx.h): the tile shape they all use, 16 rows x 64 bytes
// (a bf16 tile of 16 x 32, or an fp32 one of 16 x 16), in all 8 tile registers, and its palette-1 configuration.
// Which tile holds what is each kernel's own choice (its header says).
#pragma once
#include <cstdint>

namespace slimformer {

constexpr int64_t kAmxK = 32;            // bf16 inputs per tile row (16 pairs): one tdpbf16ps step
constexpr int64_t kAmxTileBytes = 1024;  // 16 rows x 64 bytes

// ldtilecfg's 64-byte operand: palette 1, tiles 0-7 all 16 rows x 64 bytes.
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

}  // namespace slimformer
