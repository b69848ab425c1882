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

// The emulation: vdpbf16ps lane by lane in portable C++ (float32 FMAs, the odd element of a pair
// first, denormal inputs read as zero and denormal results flushed to zero, round to nearest even).
const GemmBf16Kernels& gemm_bf16_kernels_emulated();

// Which bfloat16 micro-kernel fastconv::gemm uses for bfloat16 operands: the real one where the active
// ISA is avx512_bf16, otherwise none (the operands are widened to float32 in packing instead).
enum class Bf16Path { auto_, float32, emulated, avx512_bf16 };

// A bfloat16 GEMM through a chosen path (the tests compare them); a, b point at c10::BFloat16 bits.
// Returns false when the path cannot run on this CPU.
bool gemm_bf16(const MixedGemmArgs& g, Bf16Path path);

}  // namespace fastconv::cpu
