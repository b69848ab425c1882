// Element types as the torch-free kernel entry points see them (the glue maps at::ScalarType here).
#pragma once

namespace fastconv {

enum class DType { f32, f64, f16, bf16 };

}  // namespace fastconv
