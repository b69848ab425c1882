// A convolution's grad_weight by stride phases (conv2d_phases.cpp), NCHW or channels-last: the strided
// layers of few output channels per tap (ResNet's stem) without lowering the input.
#pragma once

#include "common/conv2d_args.h"

namespace fastconv::cpu {

// Whether conv2d_grad_weight_phases takes this layer (T float or double): one group, stride > 1,
// kernels of 25+ taps (channels-last: or inputs of fewer than 16 channels), output rows of 14 to a K
// block of values, and the phase planes within the convolutions' workspace (conv2d_phases.cpp says why).
template <typename T>
bool grad_weight_by_phases(const Conv2dShape& s, bool channels_last);

// dW (written, the weight's layout: K x C x kh x kw, or K x kh x kw x C with channels_last) of the
// convolution of x (N x C x H x W, or N x H x W x C) that gave grad_output dy (its layout likewise).
template <typename T>
void conv2d_grad_weight_phases(const T* dy, const T* x, T* dw, const Conv2dShape& s, bool channels_last);

// How many grad_weight passes have run by phases since the process started (for tests).
int64_t conv2d_phase_passes();

}  // namespace fastconv::cpu
