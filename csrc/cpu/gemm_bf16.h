// The bfloat16 path of the GEMM engine (torch-free): operands packed in K pairs, products summed in
// float32 by a dot-product micro-kernel (gemm_bf16_kernels.inc says the layout). Two builds of the
// micro-kernel: the real vdpbf16ps instruction (gemm_bf16_avx512.cpp, Isa::avx512_bf16) and a portable
// emulation of exactly its semantics (gemm.cpp), which the tests run on every machine.
#pragma once

#include <cstdint>

#include "cpu/gemm_kernels.h"

namespace fastconv::cpu {

struct GemmBf16Kernels {
  int mr, nr;   // the micro-tile
  // C[i0:i0+mc, j0:j0+nc] (+)= alpha * A B over one K block of kc steps from pair-packed panels (A
  // panels MR tall and B panels NR wide, 2 * ceil(kc / 2) steps deep); first applies beta.
  void (*macro)(const GemmArgs<float>& g, const uint16_t* ap, const uint16_t* bp, int64_t i0, int64_t mc, int64_t j0,
                int64_t nc, int64_t kc, bool first);
};

extern const GemmBf16Kernels gemm_bf16_kernels_avx512bf16;

// The micro-kernel a bfloat16 GEMM runs on. auto_ is fastconv::gemm's choice: the real vdpbf16ps
// where the active ISA is avx512_bf16, else float32 (the operands widened in packing for the float32
// kernels). emulated: the pair-packed path on gemm.cpp's portable vdpbf16ps (float32 FMAs, the odd
// element of a pair first, denormal inputs read as zero, denormal results flushed to zero).
enum class Bf16Path { auto_, float32, emulated, avx512_bf16 };

// A bfloat16 GEMM through a chosen path (the tests compare them); a, b point at c10::BFloat16 bits.
// Returns false when the path cannot run on this CPU.
bool gemm_bf16(const MixedGemmArgs& g, Bf16Path path);

}  // namespace fastconv::cpu
