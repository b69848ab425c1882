// fastconv's op table: every schema in one TORCH_LIBRARY block. Backends register their kernels with
// TORCH_LIBRARY_IMPL(fastconv, CPU|CUDA, m) in csrc/cpu/<family>.cpp and csrc/cuda/<family>.cpp;
// the CNN ops' autograd in csrc/autograd.cpp; fake (meta) kernels, the backward ops' autograd and the
// RNN layers' are registered from Python in fastconv/ops.py.
//
// This file is also the Python module fastconv._C: importing it runs the registrations. It exposes
// no ops through Python bindings, only a few facts about the build and the CPU kernel selection.
#include <Python.h>
#include <torch/library.h>

#include <iterator>
#include <string>
#include <vector>

#include "common/winograd.h"
#include "common/weight_cache.h"
#include "cpu/conv2d_phases.h"
#include "cpu/conv2d_winograd.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"

TORCH_LIBRARY(fastconv, m) {
  // max_pool2d: same schema and semantics as aten::max_pool2d_with_indices(_backward).
  m.def("max_pool2d_with_indices(Tensor self, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_with_indices_backward(Tensor grad_output, Tensor self, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode, Tensor indices) -> Tensor");

  // batch_norm (+ fused ReLU), with aten::native_batch_norm's arguments: the running statistics are
  // read in inference and, in training, updated in place as torch's kernel does (running = momentum *
  // batch + (1 - momentum) * running, the batch variance unbiased) unless the input is empty.
  // save_mean/save_invstd are the statistics used (batch or running); batch_var is the biased batch
  // variance in training and empty in inference. relu_max (with relu) clamps the ReLU's output:
  // torch's hardtanh(y, 0, relu_max), ReLU6 at 6; the backward takes the forward's relu and relu_max.
  m.def("batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool training, float momentum, float eps, bool relu, float? relu_max=None) -> "
        "(Tensor out, Tensor save_mean, Tensor save_invstd, Tensor batch_var)");
  // grad_weight and grad_bias are empty unless grad_affine.
  m.def("batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, Tensor save_mean, "
        "Tensor save_invstd, bool training, bool relu, bool grad_affine, float? relu_max=None) -> "
        "(Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");

  // GEMM engine: out = alpha * op(a) @ op(b) + beta * c, op(x) = x^T when trans_x; c (optional) is
  // broadcast to the output's shape, and not read when beta == 0 (as BLAS). float16/bfloat16 a and b
  // are accumulated in float32; out_dtype (default: a's) may then be float32, float16 or bfloat16.
  m.def("gemm(Tensor a, Tensor b, Tensor? c, bool trans_a, bool trans_b, float alpha, float beta, "
        "ScalarType? out_dtype=None) -> Tensor");

  // conv2d: torch's convolution with symmetric padding (fastconv.functional.conv2d turns 'same',
  // 'valid' and asymmetric padding into this); algorithm: "auto", "im2col", "direct", "winograd",
  // "winograd_2x2" or "winograd_4x4".
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str algorithm) -> Tensor");
  // Outputs where output_mask is false are empty (0 elements).
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, str algorithm, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // RNN layers: one layer, one direction, over a packed sequence (common/rnn_args.h): input (N, I) holds
  // the rows of every time step, step t has batch_sizes[t] (an int64 CPU tensor, non-increasing) rows;
  // a padded (T, B, I) input is the same with batch_sizes = [B] * T. hx (and the LSTM's cx) hold one row
  // per sequence; hy / cy are the states each sequence ended with. reverse runs the steps from last to
  // first (the backward direction of a bidirectional layer). workspace is what the backward needs
  // (csrc/cpu/rnn.cpp says what). Backward output_mask: (grad_input, grad_hx [and grad_cx], weights and
  // biases); masked-off outputs are empty. LSTM grad_bias is the gradient of bias_ih and of bias_hh
  // alike (and of a zero bias where the layer has none); grad_w_hr is empty without a projection. The
  // backward ops take the layer's biases, checked but not read (the workspace holds what they added):
  // their own gradients (double backward, fastconv/ops.py) depend on them.
  m.def("lstm_layer(Tensor input, Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? w_hr, bool reverse) -> (Tensor output, Tensor hy, Tensor cy, Tensor workspace)");
  m.def("lstm_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor batch_sizes, "
        "Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor output, "
        "Tensor workspace, bool reverse, bool[3] output_mask) -> (Tensor grad_input, Tensor grad_hx, "
        "Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias, Tensor grad_w_hr)");
  m.def("gru_layer(Tensor input, Tensor batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
        "bool reverse) -> (Tensor output, Tensor hy, Tensor workspace)");
  m.def("gru_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor batch_sizes, Tensor hx, "
        "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor output, Tensor workspace, bool reverse, "
        "bool[3] output_mask) -> "
        "(Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
}

namespace {

using fastconv::cpu::Isa;

PyObject* py_cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(fastconv::cpu::isa_name(fastconv::cpu::active_isa()));
}

PyObject* py_best_cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(fastconv::cpu::isa_name(fastconv::cpu::best_supported_isa()));
}

PyObject* py_set_cpu_isa(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  Isa isa;
  if (!fastconv::cpu::parse_isa(name, &isa)) {
    PyErr_Format(PyExc_ValueError,
                 "fastconv: unknown CPU ISA '%s' (expected scalar, avx2, avx512, avx512_bf16, amx or avx512_emulated)",
                 name);
    return nullptr;
  }
  if (!fastconv::cpu::set_active_isa(isa)) {
    PyErr_Format(PyExc_ValueError, "fastconv: this CPU cannot run '%s' kernels (best: %s)", name,
                 fastconv::cpu::isa_name(fastconv::cpu::best_supported_isa()));
    return nullptr;
  }
  Py_RETURN_NONE;
}

// The names of the ISA levels, narrowest first, that `keep` accepts, as a Python list.
template <typename Keep>
PyObject* isa_names(Keep keep) {
  PyObject* list = PyList_New(0);
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512_bf16, Isa::amx, Isa::avx512_emulated}) {
    if (!keep(isa)) continue;
    PyObject* name = PyUnicode_FromString(fastconv::cpu::isa_name(isa));
    PyList_Append(list, name);
    Py_DECREF(name);
  }
  return list;
}

PyObject* py_cpu_isas(PyObject*, PyObject*) {
  return isa_names([](Isa) { return true; });
}

// The levels this CPU runs, as the tests, the check and the ASan smoke walk them: the native ones narrowest
// first, then avx512_emulated where the CPU has AVX2 but no AVX-512 (on an AVX-512 CPU the real builds
// run that code; without AVX2 nothing of it can).
PyObject* py_tested_cpu_isas(PyObject*, PyObject*) {
  const Isa best = fastconv::cpu::best_supported_isa();
  return isa_names([best](Isa isa) { return isa == Isa::avx512_emulated ? best == Isa::avx2 : isa <= best; });
}

PyObject* py_cuda_compiled(PyObject*, PyObject*) {
#ifdef FASTCONV_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyObject* py_fma_peak(PyObject*, PyObject* args) {
  int single = 1;
  double seconds = 0.2;
  if (!PyArg_ParseTuple(args, "|pd", &single, &seconds)) return nullptr;
  double gflops;
  Py_BEGIN_ALLOW_THREADS gflops = fastconv::cpu::measured_fma_peak_gflops(single != 0, seconds);
  Py_END_ALLOW_THREADS return PyFloat_FromDouble(gflops);
}

// The float32 GEMM's cache blocking on this CPU and active ISA, and the caches it derives from.
PyObject* py_gemm_blocking(PyObject*, PyObject*) {
  const auto& caches = fastconv::cpu::cache_sizes();
  const auto tile = fastconv::cpu::gemm_tile<float>();
  const auto b = fastconv::cpu::gemm_blocking<float>();
  return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:l,s:l,s:l}", "mr", (long long)tile.mr, "nr", (long long)tile.nr, "kc",
                       (long long)b.kc, "mc", (long long)b.mc, "nc", (long long)b.nc, "l1d", caches.l1d, "l2", caches.l2,
                       "l3", caches.l3);
}

// The blocking rule itself for given caches and micro-tile (for the tests): (kc, mc, nc).
PyObject* py_gemm_blocking_rule(PyObject*, PyObject* args) {
  long l1d, l2, l3;
  long long mr, nr, elem;
  if (!PyArg_ParseTuple(args, "lllLLL", &l1d, &l2, &l3, &mr, &nr, &elem)) return nullptr;
  const auto b = fastconv::cpu::gemm_blocking_rule(fastconv::cpu::CacheSizes{l1d, l2, l3}, mr, nr, elem);
  return Py_BuildValue("(LLL)", (long long)b.kc, (long long)b.mc, (long long)b.nc);
}

template <size_t R, size_t C>
PyObject* matrix_list(const double (&mat)[R][C]) {
  PyObject* rows = PyList_New(R);
  for (size_t i = 0; i < R; ++i) {
    PyObject* row = PyList_New(C);
    for (size_t j = 0; j < C; ++j) PyList_SET_ITEM(row, j, PyFloat_FromDouble(mat[i][j]));
    PyList_SET_ITEM(rows, i, row);
  }
  return rows;
}

template <int M>
PyObject* winograd_matrices() {
  return Py_BuildValue("{s:N,s:N,s:N}", "BT", matrix_list(fastconv::Winograd<M>::kBT), "G",
                       matrix_list(fastconv::Winograd<M>::kG), "AT", matrix_list(fastconv::Winograd<M>::kAT));
}

// The matrices of common/winograd.h, for the tests: {"BT": ..., "G": ..., "AT": ...} as lists of rows.
PyObject* py_winograd_matrices(PyObject*, PyObject* args) {
  int m = 0;
  if (!PyArg_ParseTuple(args, "i", &m)) return nullptr;
  if (m == 2) return winograd_matrices<2>();
  if (m == 4) return winograd_matrices<4>();
  PyErr_Format(PyExc_ValueError, "fastconv: Winograd tile size must be 2 or 4, got %d", m);
  return nullptr;
}

template <int M>
std::vector<double> apply_1d(const std::string& kind, const std::vector<double>& x) {
  std::vector<double> y(kind == "output" ? M : kind == "filter_adjoint" ? 3 : M + 2);
  if (kind == "input") fastconv::Winograd<M>::template input<double>(x.data(), 1, y.data(), 1);
  if (kind == "filter") fastconv::Winograd<M>::template filter<double>(x.data(), 1, y.data(), 1);
  if (kind == "output") fastconv::Winograd<M>::template output<double>(x.data(), 1, y.data(), 1);
  if (kind == "output_adjoint") fastconv::Winograd<M>::template output_adjoint<double>(x.data(), 1, y.data(), 1);
  if (kind == "filter_adjoint") fastconv::Winograd<M>::template filter_adjoint<double>(x.data(), 1, y.data(), 1);
  return y;
}

// The straight-line 1-D transform `kind` ("input": B^T x, "filter": G x, "output": A^T x, and the
// weight gradient's "output_adjoint": A x, "filter_adjoint": G^T x) in float64, for the tests to hold
// against the explicit matrices.
PyObject* py_winograd_transform(PyObject*, PyObject* args) {
  const char* kind = nullptr;
  int m = 0;
  PyObject* seq = nullptr;
  if (!PyArg_ParseTuple(args, "siO", &kind, &m, &seq)) return nullptr;
  const std::string k(kind);
  if ((m != 2 && m != 4) || (k != "input" && k != "filter" && k != "output" && k != "output_adjoint" &&
                              k != "filter_adjoint")) {
    PyErr_SetString(PyExc_ValueError, "fastconv: winograd_transform(kind in input/filter/output/output_adjoint/"
                                      "filter_adjoint, m in 2/4, values)");
    return nullptr;
  }
  const Py_ssize_t want = k == "filter" ? 3 : k == "output_adjoint" ? m : m + 2;
  PyObject* fast = PySequence_Fast(seq, "values must be a sequence");
  if (fast == nullptr) return nullptr;
  if (PySequence_Fast_GET_SIZE(fast) != want) {
    Py_DECREF(fast);
    PyErr_Format(PyExc_ValueError, "fastconv: %s transform of F(%d, 3) takes %zd values", kind, m, want);
    return nullptr;
  }
  std::vector<double> x(static_cast<size_t>(want));
  for (Py_ssize_t i = 0; i < want; ++i) x[static_cast<size_t>(i)] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
  Py_DECREF(fast);
  if (PyErr_Occurred()) return nullptr;
  const std::vector<double> y = m == 2 ? apply_1d<2>(k, x) : apply_1d<4>(k, x);
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(y.size()));
  for (size_t i = 0; i < y.size(); ++i) PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i), PyFloat_FromDouble(y[i]));
  return out;
}

PyObject* py_weight_cache_stats(PyObject*, PyObject*) {
  const auto s = fastconv::WeightCache::instance().stats();
  return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:O}", "entries", static_cast<long long>(s.entries), "bytes",
                       static_cast<long long>(s.bytes), "limit_bytes", static_cast<long long>(s.limit_bytes),
                       "hits", static_cast<long long>(s.hits), "misses", static_cast<long long>(s.misses),
                       "uncached", static_cast<long long>(s.uncached), "verify", s.verify ? Py_True : Py_False);
}

PyObject* py_weight_cache_set_limit(PyObject*, PyObject* arg) {
  const long long mb = PyLong_AsLongLong(arg);
  if (mb == -1 && PyErr_Occurred()) return nullptr;
  if (mb < 0) {
    PyErr_SetString(PyExc_ValueError, "weight_cache_set_limit: expected a size in MiB >= 0");
    return nullptr;
  }
  fastconv::WeightCache::instance().set_limit(static_cast<int64_t>(mb) << 20);
  Py_RETURN_NONE;
}

// A byte-size setting of a Winograd pass (>= 0, or -1 for its rule's): set(n), returning the previous one.
PyObject* set_pass_bytes(PyObject* arg, const char* name, int64_t (*set)(int64_t)) {
  const long long bytes = PyLong_AsLongLong(arg);
  if (bytes == -1 && PyErr_Occurred()) return nullptr;
  if (bytes < -1) {
    PyErr_Format(PyExc_ValueError, "%s: expected a size in bytes >= 0, or -1 for the rule's", name);
    return nullptr;
  }
  return PyLong_FromLongLong(set(bytes));
}

PyObject* py_winograd_set_fused_min_bytes(PyObject*, PyObject* arg) {
  return set_pass_bytes(arg, "winograd_set_fused_min_bytes", fastconv::cpu::winograd_set_fused_min_bytes);
}

PyObject* py_winograd_fused_passes(PyObject*, PyObject*) {
  return PyLong_FromLongLong(fastconv::cpu::winograd_fused_passes());
}

PyObject* py_winograd_set_tiled_max_bytes(PyObject*, PyObject* arg) {
  return set_pass_bytes(arg, "winograd_set_tiled_max_bytes", fastconv::cpu::winograd_set_tiled_max_bytes);
}

PyObject* py_winograd_tiled_passes(PyObject*, PyObject*) {
  return PyLong_FromLongLong(fastconv::cpu::winograd_tiled_passes());
}

PyObject* py_conv2d_phase_passes(PyObject*, PyObject*) {
  return PyLong_FromLongLong(fastconv::cpu::conv2d_phase_passes());
}

// The weight cache's exact mode (a copy compared byte for byte) on or off: the previous setting.
PyObject* py_weight_cache_set_verify(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return PyBool_FromLong(fastconv::WeightCache::instance().set_verify(on != 0));
}

// The weight cache's digest (cpu/weight_digest.h) of a buffer's bytes under this process's key, and the
// key itself: for the tests' reference implementation.
PyObject* py_weight_digest(PyObject*, PyObject* arg) {
  Py_buffer view;
  if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) != 0) return nullptr;
  const fastconv::cpu::WeightDigest d = fastconv::cpu::weight_digest(view.buf, static_cast<int64_t>(view.len));
  PyBuffer_Release(&view);
  return Py_BuildValue("(KKKK)", static_cast<unsigned long long>(d.y[0]), static_cast<unsigned long long>(d.y[1]),
                       static_cast<unsigned long long>(d.y[2]), static_cast<unsigned long long>(d.y[3]));
}

PyObject* py_weight_digest_key(PyObject*, PyObject*) {
  const auto& key = fastconv::cpu::digest_key();
  PyObject* k = PyList_New(static_cast<Py_ssize_t>(std::size(key.k)));
  for (size_t i = 0; i < std::size(key.k); ++i) {
    PyList_SET_ITEM(k, static_cast<Py_ssize_t>(i), PyLong_FromUnsignedLong(key.k[i]));
  }
  PyObject* r = PyList_New(fastconv::cpu::kDigestStreams);
  for (int s = 0; s < fastconv::cpu::kDigestStreams; ++s) PyList_SET_ITEM(r, s, PyLong_FromUnsignedLongLong(key.r[s]));
  return Py_BuildValue("(NN)", k, r);
}

PyObject* py_weight_cache_clear(PyObject*, PyObject*) {
  fastconv::WeightCache::instance().clear();
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "The CPU ISA the vectorised kernels use now."},
    {"best_cpu_isa", py_best_cpu_isa, METH_NOARGS, "The widest CPU ISA this machine supports."},
    {"set_cpu_isa", py_set_cpu_isa, METH_O, "Use 'scalar', 'avx2', 'avx512' or 'avx512_bf16' kernels (for tests)."},
    {"cpu_isas", py_cpu_isas, METH_NOARGS, "The CPU ISA levels fastconv knows, narrowest first."},
    {"tested_cpu_isas", py_tested_cpu_isas, METH_NOARGS,
     "The CPU ISA levels the tests run here: the native ones narrowest first, then avx512_emulated where "
     "the CPU has AVX2 but no AVX-512."},
    {"cuda_compiled", py_cuda_compiled, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {"fma_peak_gflops", py_fma_peak, METH_VARARGS,
     "fma_peak_gflops(single=True, seconds=0.2): measured FMA peak of the active CPU ISA on torch's threads."},
    {"gemm_blocking", py_gemm_blocking, METH_NOARGS,
     "The float32 GEMM's micro-tile and cache blocking on this CPU (active ISA), and the cache sizes they come from."},
    {"gemm_blocking_rule", py_gemm_blocking_rule, METH_VARARGS,
     "gemm_blocking_rule(l1d, l2, l3, mr, nr, elem) -> (kc, mc, nc): the blocking rule for those caches."},
    {"winograd_matrices", py_winograd_matrices, METH_VARARGS,
     "winograd_matrices(m): the B^T, G and A^T matrices of F(m x m, 3 x 3) (m = 2 or 4)."},
    {"winograd_transform", py_winograd_transform, METH_VARARGS,
     "winograd_transform(kind, m, values): the straight-line 1-D input/filter/output transform (or the "
     "output_adjoint/filter_adjoint of the weight gradient) in float64."},
    {"winograd_set_fused_min_bytes", py_winograd_set_fused_min_bytes, METH_O,
     "winograd_set_fused_min_bytes(n) -> previous: the least transformed-filter size (bytes) for Winograd's fused "
     "pass on filters transformed per call (-1: the rule's, 4 x L2; 0: every eligible call; for tests)."},
    {"winograd_fused_passes", py_winograd_fused_passes, METH_NOARGS,
     "How many Winograd passes have run fused (per block of output channels) in this process."},
    {"winograd_set_tiled_max_bytes", py_winograd_set_tiled_max_bytes, METH_O,
     "winograd_set_tiled_max_bytes(n) -> previous: the most bytes of a thread's working set (its ring of "
     "transformed tiles) for Winograd's tiled passes (per block of tiles on one thread; -1: the rule's, the L2; "
     "0: never; for tests)."},
    {"winograd_tiled_passes", py_winograd_tiled_passes, METH_NOARGS,
     "How many Winograd passes have run tiled (per block of tiles on one thread) in this process."},
    {"conv2d_phase_passes", py_conv2d_phase_passes, METH_NOARGS,
     "How many convolution grad_weight passes have run by stride phases (conv2d_phases.cpp) in this process."},
    {"weight_cache_stats", py_weight_cache_stats, METH_NOARGS,
     "Entries, bytes, limit, hits, misses and uncached transforms (budget full) of the CPU cache of prepared "
     "weights (Winograd transforms, im2col packed filters), and whether it compares bytes exactly (verify)."},
    {"weight_cache_set_verify", py_weight_cache_set_verify, METH_O,
     "weight_cache_set_verify(on) -> previous: entries keep a copy of their weight's bytes and every lookup "
     "compares it (exact), instead of a digest (default; FASTCONV_WEIGHT_CACHE_VERIFY=1 starts with it on). "
     "Changing it empties the cache."},
    {"weight_digest", py_weight_digest, METH_O,
     "weight_digest(buffer) -> 4 ints: the weight cache's digest of a C-contiguous buffer's bytes (for tests)."},
    {"weight_digest_key", py_weight_digest_key, METH_NOARGS,
     "weight_digest_key() -> (K, r): this process's digest key, NH words and polynomial points (for tests)."},
    {"weight_cache_clear", py_weight_cache_clear, METH_NOARGS,
     "Empties the cache of prepared weights (frees its memory; never needed for correctness)."},
    {"weight_cache_set_limit", py_weight_cache_set_limit, METH_O,
     "weight_cache_set_limit(mb): the cache's budget in MiB (0 turns it off; default 2048 or FASTCONV_WEIGHT_CACHE_MB)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastconv's compiled kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
