"""Every CPU kernel under AddressSanitizer on many geometries, all SIMD variants (the emulated AVX-512 one
too where the CPU lacks AVX-512; run by scripts/asan_check.sh). No call here raises: under a preloaded
ASan, C++ exceptions abort the process (the runtime's __cxa_throw interceptor), so error paths are left
to the normal test suite."""

import itertools, torch, fastconv
import fastconv.functional as F
from fastconv.ops import pool_output_size, gemm
torch.manual_seed(0)
n = 0  # op invocations
for isa in reversed(fastconv._C.tested_cpu_isas()):
    fastconv._C.set_cpu_isa(isa)
    for k, s, d, ceil, W, C, mf in itertools.product([1,2,3,5], [1,2,3], [1,2], [False, True], [1,5,17,33,40], [1,6,17,70], [torch.contiguous_format, torch.channels_last]):
        for p in range(0, k // 2 + 1):
            H = 7
            oh = pool_output_size(H, k, p, s, d, ceil); ow = pool_output_size(W, k, p, s, d, ceil)
            if oh < 1 or ow < 1: continue
            x = torch.randn(2, C, H, W).contiguous(memory_format=mf).requires_grad_(True)
            y = F.max_pool2d(x, k, s, p, d, ceil); y.sum().backward(); n += 1
    for shape, mf in [((6,3), torch.contiguous_format), ((4,5,7,9), torch.channels_last), ((3,17,13,11), torch.contiguous_format), ((2,70,5,3), torch.channels_last), ((2,3,4,5,6), torch.channels_last_3d)]:
        for act, training, dt in itertools.product([False, True, 0.75], [False, True], [torch.float32, torch.bfloat16, torch.float16]):
            x = torch.randn(shape).to(dt).contiguous(memory_format=mf).requires_grad_(True)
            w = torch.rand(shape[1], requires_grad=True); b = torch.randn(shape[1], requires_grad=True)
            relu_max = None if isinstance(act, bool) else act   # 0.75: the clamped ReLU (relu_max)
            F.batch_norm(x, torch.zeros(shape[1]), torch.ones(shape[1]), w, b, training, relu=act is not False, relu_max=relu_max).float().sum().backward(); n += 1
    for (m, nn_, kk), ta, tb in itertools.product([(1,1,1),(7,33,5),(241,65,257),(13,3100,300),(131,24,513),(97,3,40)], [False, True], [False, True]):
        a = torch.randn((kk, m) if ta else (m, kk)); b = torch.randn((nn_, kk) if tb else (kk, nn_))
        gemm(a, b, torch.randn(nn_), ta, tb, 1.0, 1.0); n += 1
        for dt, out in [(torch.bfloat16, None), (torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)]:
            ah, bh = a.to(dt).requires_grad_(), b.to(dt).requires_grad_()
            gemm(ah, bh, torch.randn(nn_).to(out or dt), ta, tb, 1.0, 1.0, out).float().sum().backward(); n += 1
        for path in ("emulated", "amx_emulated"):   # the portable vdpbf16ps and AMX tiles
            torch.ops.fastconv_testing.gemm_bf16_path(a.bfloat16(), b.bfloat16(), ta, tb, path, None); n += 1
    # The weight cache's digest (its NH per ISA): lengths around words, chunks and 1 MiB segments, odd starts.
    buf = torch.randint(0, 256, (3 << 20,), dtype=torch.uint8).numpy()
    for length, start in itertools.product((1, 3, 4094, 4096, 4099, (1 << 20) + 4097), (0, 1, 3)):
        fastconv._C.weight_digest(buf[start:start + length]); n += 1
    # (the last two: grad_weight by stride phases, a 7x7 stem and, channels-last, 3x3 over 3 channels)
    for xs, ws, s_, p_, d_, g_ in [((2,3,9,11),(4,3,3,3),1,1,1,1), ((2,4,9,11),(6,2,3,2),(2,1),(1,0),(1,2),2), ((1,4,8,8),(4,1,3,3),1,1,1,4), ((2,5,7,7),(3,5,1,1),1,0,1,1), ((2,3,16,16),(5,3,7,7),2,3,1,1), ((2,3,10,10),(2,3,3,3),1,5,4,1), ((3,10,10),(2,3,4,3),1,'same',1,1), ((5,4,6,5),(6,2,3,3),1,1,1,2), ((3,40,7,7),(40,40,3,3),1,1,1,1), ((2,20,9,8),(36,20,3,3),2,1,1,1), ((2,32,6,7),(12,16,3,3),2,1,1,2), ((2,16,7,7),(8,16,1,1),1,0,1,1), ((2,24,9,9),(70,24,1,1),2,0,1,1), ((2,3,30,29),(6,3,7,7),2,3,1,1), ((1,3,33,31),(17,3,3,3),2,1,1,1)]:
        for algo, mf in itertools.product(("im2col", "direct"), (torch.contiguous_format, torch.channels_last)):
            if mf is torch.channels_last and len(xs) != 4:
                continue   # channels-last: the NHWC kernels (16+ channels per group) and the NCHW copies
            x = torch.randn(xs).contiguous(memory_format=mf).requires_grad_(True); w = torch.randn(ws, requires_grad=True); bb = torch.randn(ws[0], requires_grad=True)
            F.conv2d(x, w, bb, s_, p_, d_, g_, algorithm=algo).sum().backward(); n += 1
            with torch.autocast("cpu", dtype=torch.bfloat16):   # half precision through autocast
                F.conv2d(x, w, bb, s_, p_, d_, g_, algorithm=algo).float().sum().backward(); n += 1
    # depthwise: planes over 256 pixels (NCHW phases in the forward pass) and over 1024 (in the backward
    # passes too); channels in whole vectors (the channels-last row kernels' blocks of pixels and taps)
    for xs, k, s_, p_, d_ in [((2,5,19,23),(3,3),1,1,1), ((1,6,21,18),(3,3),2,1,1), ((2,4,17,20),(5,3),(2,3),(2,0),(1,2)), ((1,3,30,9),(3,3),3,4,2),
                              ((1,2,33,35),(3,3),2,1,1), ((2,16,12,14),(3,3),1,1,1), ((1,40,9,10),(3,3),2,1,1), ((1,64,7,11),(3,3),1,2,(1,2))]:
        for mf in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(xs).contiguous(memory_format=mf).requires_grad_(True); w = torch.randn(xs[1], 1, *k, requires_grad=True)
            F.conv2d(x, w, torch.randn(xs[1]), s_, p_, d_, xs[1], algorithm="direct").sum().backward(); n += 1
    for xs, ws, s_, p_, d_ in [((2,5,9,7),(70,5,3,3),(1,1),(1,1),(1,1)), ((1,17,11,13),(3,17,3,2),(2,3),(2,0),(1,2)), ((1,4,3,3),(2,4,3,3),(3,3),(4,4),(1,1))]:
        x, w, bb = torch.randn(xs).bfloat16(), torch.randn(ws).bfloat16(), torch.randn(ws[0]).bfloat16()
        torch.ops.fastconv_testing.conv2d_bf16_direct(x, w, bb, s_, p_, d_, "emulated"); n += 1   # the portable build
    for xs, k, p_ in [((2,3,7,6),4,1), ((1,17,13,5),16,2), ((3,32,9,9),40,0), ((2,5,4,4),3,4), ((4,64,60,60),64,1)]:
        for algo in ("winograd_2x2", "winograd_4x4"):   # the last shape: grad_weight over several chunks
            x = torch.randn(xs, requires_grad=True); w = torch.randn(k, xs[1], 3, 3, requires_grad=True); bb = torch.randn(k, requires_grad=True)
            F.conv2d(x, w, bb, 1, p_, algorithm=algo).sum().backward(); n += 1
            before = fastconv._C.winograd_set_fused_min_bytes(0)   # the fused pass, forced on these small U
            F.conv2d(x, w, bb, 1, p_, algorithm=algo).sum().backward(); n += 1
            fastconv._C.winograd_set_fused_min_bytes(before)
            before = fastconv._C.winograd_set_tiled_max_bytes(1 << 40)   # the tiled pass, forced on every shape
            F.conv2d(x, w, bb, 1, p_, algorithm=algo).sum().backward(); n += 1
            fastconv._C.winograd_set_tiled_max_bytes(before)
            xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)   # through NCHW copies
            F.conv2d(xc, w, bb, 1, p_, algorithm=algo).sum().backward(); n += 1
            with torch.no_grad():
                for _ in range(2):   # the weight cache: a miss, then a hit (its byte comparison)
                    F.conv2d(x, w, bb, 1, p_, algorithm=algo); n += 1
                w.data.mul_(2)
                F.conv2d(x, w, bb, 1, p_, algorithm=algo); n += 1   # changed bytes: a miss again
                with torch.autocast("cpu", dtype=torch.bfloat16):   # the kept bfloat16 cast, then its transform
                    for _ in range(2):
                        F.conv2d(x, w.detach(), bb.detach(), 1, p_, algorithm=algo); n += 1
            xg = torch.randn(xs, dtype=torch.float64, requires_grad=True)   # double backward
            wg = torch.randn(k, xs[1], 3, 3, dtype=torch.float64, requires_grad=True)
            (gx,) = torch.autograd.grad(F.conv2d(xg, wg, None, 1, p_, algorithm=algo).square().sum(), xg, create_graph=True)
            gx.sum().backward(); n += 1
    from torch.nn.utils.rnn import pack_padded_sequence
    for (T, B, I, H), P, bi, dt in itertools.product([(1, 1, 1, 1), (5, 3, 4, 17), (7, 9, 33, 40)], [0, 3], [False, True], [torch.float32, torch.float64]):
        for kind in ("LSTM", "GRU"):
            if kind == "GRU" and P:
                continue
            m = getattr(fastconv.nn, kind)(I, H, num_layers=2, bidirectional=bi, dtype=dt, **({"proj_size": P} if P and P < H else {}))
            x = torch.randn(T, B, I, dtype=dt, requires_grad=True)
            m(x)[0].sum().backward(); n += 1
            lengths = torch.linspace(T, 1, B).round().long()
            m(pack_padded_sequence(x, lengths))[0].data.sum().backward(); n += 1
            with torch.no_grad():
                for _ in range(3):
                    m(x); n += 1   # inference: packed weights in scratch, then kept by the weight cache, then a hit
        for cell in (fastconv.nn.LSTMCell(I, H, dtype=dt), fastconv.nn.GRUCell(I, H, dtype=dt)):
            xc = torch.randn(B, I, dtype=dt, requires_grad=True)
            out = cell(xc)
            (out[0] if isinstance(out, tuple) else out).sum().backward(); n += 1
            out = cell(xc)   # double backward (a gradient penalty)
            (g,) = torch.autograd.grad((out[0] if isinstance(out, tuple) else out).tanh().sum(), xc, create_graph=True)
            g.square().sum().backward(); n += 1
# The CUDA tensor-core GEMMs' block algorithms (mma.sync; TMA + wgmma) on their CPU emulations
# (ISA-independent: once), both layouts of each operand, edges, a copied operand and a c.
for (m, nn_, kk), ta, tb in itertools.product([(1,1,1),(129,127,33),(7,260,70)], [False, True], [False, True]):
    a = torch.randn((kk, m) if ta else (m, kk)).bfloat16(); b = torch.randn((nn_, kk) if tb else (kk, nn_)).bfloat16()
    a_odd = torch.randn(a.shape[0], a.shape[1] + 1).half()[:, 1:]   # a misaligned start: the glue copies it
    for emulated in (torch.ops.fastconv_testing.cuda_mma_gemm, torch.ops.fastconv_testing.cuda_wgmma_gemm):
        emulated(a, b, torch.randn(nn_), ta, tb, 1.0, 1.0, torch.float32); n += 1
        emulated(a_odd, b.half(), None, ta, tb); n += 1
# conv2d's half-precision forward on the emulated tensor cores: groups, padding, bundles and chunks.
for dt, ws in itertools.product((torch.bfloat16, torch.float16), (1 << 26, 600)):
    x = torch.randn(3, 6, 7, 9).to(dt); w = torch.randn(10, 3, 3, 2).to(dt)
    torch.ops.fastconv_testing.cuda_conv2d_half(x, w, torch.randn(10).to(dt), (2, 1), (1, 0), (1, 2), 2, ws); n += 1
print("asan smoke ok:", n, "op calls with", fastconv._C.__file__)
