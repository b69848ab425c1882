// fastconv's op table: every schema in one TORCH_LIBRARY block. Backends register their kernels with
// TORCH_LIBRARY_IMPL(fastconv, CPU|CUDA, m) in csrc/cpu/<family>.cpp and csrc/cuda/<family>.cpp;
// fake (meta) kernels and autograd are registered from Python in fastconv/ops.py.
//
// This file is also the Python module fastconv._C: importing it runs the registrations. It exposes
// no ops through Python bindings, only a few facts about the build and the CPU kernel selection.
#include <Python.h>
#include <torch/library.h>

#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"

TORCH_LIBRARY(fastconv, m) {
  // max_pool2d: same schema and semantics as aten::max_pool2d_with_indices(_backward).
  m.def("max_pool2d_with_indices(Tensor self, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_with_indices_backward(Tensor grad_output, Tensor self, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode, Tensor indices) -> Tensor");

  // batch_norm (+ fused ReLU). Functional: the running statistics are read (inference), never
  // written; fastconv.functional.batch_norm updates them from batch_var (training) as torch does.
  // save_mean/save_invstd are the statistics used (batch or running); batch_var is the biased batch
  // variance in training and empty in inference.
  m.def("batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
        "bool training, float eps, bool relu) -> (Tensor out, Tensor save_mean, Tensor save_invstd, "
        "Tensor batch_var)");
  // grad_weight and grad_bias are empty unless grad_affine.
  m.def("batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, Tensor save_mean, "
        "Tensor save_invstd, bool training, bool relu, bool grad_affine) -> (Tensor grad_input, "
        "Tensor grad_weight, Tensor grad_bias)");

  // GEMM engine: out = alpha * op(a) @ op(b) + beta * c, op(x) = x^T when trans_x; c (optional) is
  // broadcast to the output's shape, and not read when beta == 0 (as BLAS).
  m.def("gemm(Tensor a, Tensor b, Tensor? c, bool trans_a, bool trans_b, float alpha, float beta) -> Tensor");

  // conv2d: torch's convolution with symmetric padding (fastconv.functional.conv2d turns 'same',
  // 'valid' and asymmetric padding into this); algorithm: "auto", "im2col" or "direct".
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str algorithm) -> Tensor");
  // Outputs where output_mask is false are empty (0 elements).
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, str algorithm, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
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
    PyErr_Format(PyExc_ValueError, "fastconv: unknown CPU ISA '%s' (expected scalar, avx2 or avx512)", name);
    return nullptr;
  }
  if (!fastconv::cpu::set_active_isa(isa)) {
    PyErr_Format(PyExc_ValueError, "fastconv: this CPU cannot run '%s' kernels (best: %s)", name,
                 fastconv::cpu::isa_name(fastconv::cpu::best_supported_isa()));
    return nullptr;
  }
  Py_RETURN_NONE;
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

PyMethodDef methods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "The CPU ISA the vectorised kernels use now."},
    {"best_cpu_isa", py_best_cpu_isa, METH_NOARGS, "The widest CPU ISA this machine supports."},
    {"set_cpu_isa", py_set_cpu_isa, METH_O, "Use 'scalar', 'avx2' or 'avx512' kernels (for tests)."},
    {"cuda_compiled", py_cuda_compiled, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {"fma_peak_gflops", py_fma_peak, METH_VARARGS,
     "fma_peak_gflops(single=True, seconds=0.2): measured FMA peak of the active CPU ISA on torch's threads."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastconv's compiled kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
