"""The cache of prepared weights (csrc/common/weight_cache.h): every write to a weight shows in the
next call, however it was made (`.data`, numpy views, in-place ops, optimizer steps, copy_), for every
algorithm; repeated calls hit; the byte budget keeps part of a model that does not fit instead of
cycling it; entries die with their weights; CUDA weights are not cached. And the digest by which an
entry knows its weight's bytes (csrc/cpu/weight_digest.h): the documented hash on every ISA and thread
count, against a reference written here from its definition, and changed by any one-bit change."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F

ALGORITHMS = ["im2col", "winograd", "winograd_2x2", "direct", "auto"]


def _close(a, b):   # Winograd F(4x4) rounds ~5x worse than direct convolution
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * (1 + b.abs().max().item()))


@pytest.fixture(autouse=True)
def fresh_cache():
    verify = fastconv._C.weight_cache_set_verify(False)
    fastconv._C.weight_cache_clear()
    fastconv._C.weight_cache_set_limit(2048)
    yield
    fastconv._C.weight_cache_set_limit(2048)
    fastconv._C.weight_cache_set_verify(verify)
    fastconv._C.weight_cache_clear()


WRITES = {
    ".data.mul_": lambda w: w.data.mul_(2),
    ".data.copy_": lambda w: w.data.copy_(torch.randn_like(w)),
    "numpy view": lambda w: w.detach().numpy().__setitem__((0, 0, 1, 1), 7.0),
    "in place": lambda w: w.add_(0.25),
    "one element": lambda w: w.data.view(-1)[-1].fill_(-3.0),
}


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("verify", [False, True], ids=["digest", "verify"])
def test_every_write_shows_in_the_next_call(algorithm, write, memory_format, verify):
    # The report: under no_grad, y2 came back equal to y1 after w.data.mul_(2). Channels-last
    # input: im2col's NHWC kernels keep their own packed filters (conv2d_nhwc.cpp). Both ways of
    # checking an entry: its weight's digest (the default), or a copy compared byte for byte.
    fastconv._C.weight_cache_set_verify(verify)
    assert fastconv._C.weight_cache_stats()["verify"] is verify
    torch.manual_seed(0)
    x = torch.randn(2, 64, 9, 9).contiguous(memory_format=memory_format)   # 64 -> 64 channels, 9x9:
                                                                           # "auto" picks Winograd in inference
    w = torch.randn(64, 64, 3, 3) * 0.05
    with torch.no_grad():
        for _ in range(2):                # the second call is served from the cache
            _close(F.conv2d(x, w, None, 1, 1, algorithm=algorithm), TF.conv2d(x, w, None, 1, 1))
        WRITES[write](w)
        _close(F.conv2d(x, w, None, 1, 1, algorithm=algorithm), TF.conv2d(x, w, None, 1, 1))


@pytest.mark.parametrize("algorithm", ["winograd", "auto", "im2col"])
def test_module_in_eval_sees_weight_data_copy(algorithm):
    torch.manual_seed(0)
    conv = fastconv.nn.Conv2d(64, 64, 3, padding=1, algorithm=algorithm).eval()
    ref = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        _close(conv(x), ref(x))
        new = torch.randn_like(conv.weight) * 0.05
        conv.weight.data.copy_(new)
        ref.weight.data.copy_(new)
        _close(conv(x), ref(x))
        conv.bias.data.zero_()
        ref.bias.data.zero_()
        _close(conv(x), ref(x))


def test_repeated_calls_hit_and_an_optimizer_step_misses():
    torch.manual_seed(0)
    conv = fastconv.nn.Conv2d(8, 8, 3, padding=1, algorithm="winograd").eval()
    ref = torch.nn.Conv2d(8, 8, 3, padding=1).eval()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        for _ in range(3):
            _close(conv(x), ref(x))
    stats = fastconv._C.weight_cache_stats()
    assert (stats["entries"], stats["misses"], stats["hits"]) == (1, 1, 2), stats
    assert stats["bytes"] > 0 and stats["limit_bytes"] == 2048 << 20, stats
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    conv.train()
    conv(x).square().sum().backward()      # requires grad: not cached
    opt.step()
    conv.eval()
    ref.load_state_dict(conv.state_dict())
    with torch.no_grad():
        _close(conv(x), ref(x))
    stats = fastconv._C.weight_cache_stats()
    assert (stats["entries"], stats["misses"]) == (1, 2), stats   # the entry was replaced, not added


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_im2col_packed_filters_hit_and_see_writes(dtype):
    """im2col's packed filters (float32 panels; bfloat16 K-pair panels) are cached for a frozen weight:
    repeated calls hit, a write through .data misses and shows."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 6).to(dtype)
    w = (torch.randn(24, 16, 3, 3) * 0.1).to(dtype)
    # Without a bfloat16 GEMM (AVX2-only CPUs) bfloat16 runs the float32 kernels on the weight widened
    # once: the cache holds that widened weight and the filters packed from it, two entries a weight.
    bf16_gemm = fastconv.build_info()["cpu_isa"] in ("avx512_bf16", "amx")
    per_weight = 1 if dtype == torch.float32 or bf16_gemm else 2
    with torch.no_grad():
        for _ in range(3):
            ours = F.conv2d(x, w, None, 1, 1, algorithm="im2col")
        stats = fastconv._C.weight_cache_stats()
        counts = (stats["entries"], stats["misses"], stats["hits"])
        assert counts == (per_weight, per_weight, 2 * per_weight), stats
        w.data.view(-1)[0] += 1.0
        ours = F.conv2d(x, w, None, 1, 1, algorithm="im2col")
        ref = TF.conv2d(x.double(), w.double(), None, 1, 1)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol)
        assert fastconv._C.weight_cache_stats()["misses"] == 2 * per_weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_one_weight_under_two_group_counts(dtype):
    """An 8 x 2 x 3 x 3 weight is one 8-row group at groups=1 and two 4-row groups at groups=2: its
    packed filters differ, so a call must not be served the other group count's entry (it was: NaN).
    Forward, and grad_input of the frozen weight (the transposed packing)."""
    torch.manual_seed(1)
    w = torch.randn(8, 2, 3, 3).to(dtype)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    for groups in (1, 2, 1, 2):
        x = torch.randn(2, 2 * groups, 6, 6).to(dtype).requires_grad_(True)
        ours = F.conv2d(x, w, None, 1, 1, 1, groups, algorithm="im2col")
        x64 = x.detach().double().requires_grad_(True)
        ref = TF.conv2d(x64, w.double(), None, 1, 1, 1, groups)
        torch.testing.assert_close(ours.double(), ref.detach(), rtol=tol, atol=tol)
        go = torch.randn(ref.shape)
        ours.backward(go.to(dtype))
        ref.backward(go.double())
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=tol, atol=tol)
    assert fastconv._C.weight_cache_stats()["entries"] >= 2


@pytest.mark.parametrize("algorithm", ["winograd", "im2col"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "NHWC"])
def test_frozen_weight_grad_input_and_every_isa(algorithm, memory_format):
    # A frozen weight's grad_input (an attack on a trained model) uses the cached flipped transform
    # (im2col: the transposed packed filters, NCHW's or NHWC's), one entry per ISA (the packed layout
    # depends on the micro-tile).
    torch.manual_seed(0)
    conv = fastconv.nn.Conv2d(16, 16, 3, padding=1, algorithm=algorithm).requires_grad_(False)
    ref = torch.nn.Conv2d(16, 16, 3, padding=1).requires_grad_(False)
    ref.load_state_dict(conv.state_dict())
    before = fastconv._C.cpu_isa()
    try:
        for isa in fastconv._C.tested_cpu_isas():   # avx512_emulated's micro-tile is avx512's (8 rows, not 6)
            fastconv._C.set_cpu_isa(isa)
            hits = fastconv._C.weight_cache_stats()["hits"]
            for step in range(3):
                xg = torch.randn(2, 16, 8, 8).contiguous(memory_format=memory_format).requires_grad_(True)
                xr = xg.detach().clone().requires_grad_(True)
                conv(xg).square().sum().backward()
                ref(xr).square().sum().backward()
                _close(xg.grad, xr.grad)
                if step == 1:   # the second call (forward and grad_input) was served from the cache
                    assert fastconv._C.weight_cache_stats()["hits"] >= hits + 2
                    conv.weight.data[0].neg_()
                    ref.weight.data[0].neg_()
    finally:
        fastconv._C.set_cpu_isa(before)


def test_inference_mode_weights_are_cached_and_checked():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 6, 6)
    with torch.inference_mode():
        w = torch.randn(8, 8, 3, 3)
        assert w.is_inference()
        _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))
        _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))
        assert fastconv._C.weight_cache_stats()["hits"] == 1
        w.mul_(-1)
        _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))


def test_views_and_dtypes_do_not_share_entries():
    torch.manual_seed(0)
    base = torch.randn(16, 8, 3, 3)
    x = torch.randn(1, 8, 7, 7)
    with torch.no_grad():
        for w in (base, base[:8], base[8:], base.double()):
            xx = x.to(w.dtype)
            _close(F.conv2d(xx, w, padding=1, algorithm="winograd"), TF.conv2d(xx, w, padding=1))
    assert fastconv._C.weight_cache_stats()["entries"] == 4


def _entry_bytes(c, k):
    # F(4x4)'s 36 x k x c transform (float32), about (the entry keeps no copy): packed as the GEMM's A,
    # in panels of the micro-tile's height (6 rows on AVX2: 64 outputs take 66 rows).
    mr = fastconv.build_info()["gemm_blocking"]["mr"]
    return 4 * 36 * c * ((k + mr - 1) // mr * mr)


def test_budget_keeps_part_of_a_model_instead_of_cycling():
    # Ten layers called in the same order each forward, a budget for about four: an LRU would evict
    # each entry just before its next use (no hit ever); the cache keeps the first ones and makes the
    # rest per call.
    torch.manual_seed(0)
    layers = [torch.randn(64, 64, 3, 3) * 0.05 for _ in range(10)]
    fastconv._C.weight_cache_set_limit(max(1, 4 * _entry_bytes(64, 64) // (1 << 20) + 1))
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        for _ in range(4):
            for w in layers:
                _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))
    stats = fastconv._C.weight_cache_stats()
    assert 1 <= stats["entries"] < 10 and stats["bytes"] <= stats["limit_bytes"], stats
    assert stats["hits"] == 3 * stats["entries"], stats          # every kept layer hit on rounds 2-4
    assert stats["uncached"] == 4 * (10 - stats["entries"]), stats


def test_idle_entries_make_room_and_dead_ones_leave():
    torch.manual_seed(0)
    x = torch.randn(1, 64, 8, 8)
    fastconv._C.weight_cache_set_limit(max(1, 2 * _entry_bytes(64, 64) // (1 << 20) + 1))
    old = [torch.randn(64, 64, 3, 3) for _ in range(2)]
    new = [torch.randn(64, 64, 3, 3) for _ in range(2)]
    with torch.no_grad():
        for w in old:
            F.conv2d(x, w, padding=1, algorithm="winograd")
        kept = fastconv._C.weight_cache_stats()["entries"]
        assert kept >= 1
        for _ in range(200):              # the old model is no longer used: its entries go idle
            for w in new:
                _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))
    stats = fastconv._C.weight_cache_stats()
    assert stats["hits"] >= 300, stats    # the new weights took the old ones' place
    del old, new, w
    gc.collect()
    F.conv2d(x, torch.randn(64, 64, 3, 3), padding=1, algorithm="winograd")   # a lookup sweeps the dead
    assert fastconv._C.weight_cache_stats()["entries"] == 1


def test_limit_zero_turns_the_cache_off():
    fastconv._C.weight_cache_set_limit(0)
    w = torch.randn(8, 8, 3, 3)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        for _ in range(2):
            _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))
    assert fastconv._C.weight_cache_stats()["entries"] == 0
    with pytest.raises(ValueError, match="weight_cache_set_limit"):
        fastconv._C.weight_cache_set_limit(-1)


def test_cuda_weights_are_not_cached(device):
    torch.manual_seed(0)
    w = torch.randn(8, 8, 3, 3, device=device)
    x = torch.randn(1, 8, 6, 6, device=device)
    with torch.no_grad():
        for _ in range(2):
            _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))
        w.data.mul_(3)
        _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))
    assert fastconv._C.weight_cache_stats()["entries"] == (0 if device == "cuda" else 1)


_P61 = (1 << 61) - 1


def _digest_reference(data: bytes):
    """weight_digest.h's definition: per 4 KiB chunk four Toeplitz NH sums of 32-bit word pairs, each
    stream's sums (low half, then high) and finally the length through a polynomial modulo 2^61 - 1."""
    key, points = fastconv._C.weight_digest_key()
    key = np.array(key, dtype=np.uint64)
    y = [0, 0, 0, 0]
    for c0 in range(0, len(data), 4096):
        chunk = data[c0:c0 + 4096]
        pairs = ((len(chunk) + 3) // 4 + 1) // 2
        m = np.frombuffer(chunk + bytes(8 * pairs - len(chunk)), dtype="<u4").astype(np.uint64)
        for s in range(4):
            t = (m + key[2 * s:2 * s + 2 * pairs]) & np.uint64(0xFFFFFFFF)
            nh = int((t[0::2] * t[1::2]).sum(dtype=np.uint64))   # products < 2^64; the sum wraps mod 2^64
            y[s] = ((y[s] * points[s] + (nh & 0xFFFFFFFF)) * points[s] + (nh >> 32)) % _P61
    return tuple((v * points[s] + len(data)) % _P61 for s, v in enumerate(y))


# Lengths around a word, a pair, a 4 KiB chunk and a 1 MiB segment (the parallel unit), and odd tails.
DIGEST_LENGTHS = [1, 2, 3, 4, 6, 8, 4092, 4096, 4100, 8198, (1 << 20) - 4096, (1 << 20) + 4098, 3 * (1 << 20) + 5]


def test_digest_is_the_documented_hash_on_every_isa_and_thread_count(cpu_isa_native):
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    try:
        for n in DIGEST_LENGTHS:
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            want = _digest_reference(data)
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                assert fastconv._C.weight_digest(data) == want, (cpu_isa_native, n, t)
    finally:
        torch.set_num_threads(threads)
    _, points = fastconv._C.weight_digest_key()
    assert all(0 < r < _P61 for r in points)


def test_digest_changes_with_any_one_bit_and_with_moved_words():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 3 * (1 << 20) + 4098, dtype=np.uint8)
    base = fastconv._C.weight_digest(data)
    assert fastconv._C.weight_digest(data.copy()) == base          # bytes, not the address, decide
    seen = {base}
    for pos in [0, 1, 4095, 4096, 4097, (1 << 20) - 1, 1 << 20, 2 * (1 << 20) + 12345, data.size - 2, data.size - 1]:
        for bit in (0, 7):
            flipped = data.copy()
            flipped[pos] ^= np.uint8(1 << bit)
            seen.add(fastconv._C.weight_digest(flipped))
    words = data[: data.size // 4 * 4].view("<u4")
    swapped = data.copy()
    sw = swapped[: data.size // 4 * 4].view("<u4")
    sw[[10, 5000]] = words[[5000, 10]]                               # two words swapped
    seen.add(fastconv._C.weight_digest(swapped))
    shifted = data.copy()
    shifted[4:8], shifted[8:12] = data[8:12], data[4:8]              # the two words of one pair swapped
    seen.add(fastconv._C.weight_digest(shifted))
    assert fastconv._C.weight_digest(data[:-1]) not in seen          # one byte shorter
    assert len(seen) == 1 + 10 * 2 + 2
    # A float weight's sign flip, its -0.0 and a NaN payload are all changes of bytes.
    w = torch.ones(1000)
    d = fastconv._C.weight_digest(w.numpy())
    for edit in (lambda v: v.__setitem__(999, -1.0), lambda v: v.__setitem__(0, -0.0)):
        v = w.clone()
        edit(v)
        assert fastconv._C.weight_digest(v.numpy()) != d


def test_entries_keep_a_digest_or_in_verify_mode_a_copy():
    w = torch.randn(64, 64, 3, 3)
    x = torch.randn(1, 64, 8, 8)
    for verify, extra in ((False, 0), (True, w.numel() * 4)):
        assert fastconv._C.weight_cache_set_verify(verify) is False         # the previous setting
        assert fastconv._C.weight_cache_stats()["entries"] == 0             # (True: a change empties it)
        with torch.no_grad():
            for _ in range(2):
                _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))
        stats = fastconv._C.weight_cache_stats()
        assert stats["entries"] == 1 and stats["hits"] >= 1, stats
        assert _entry_bytes(64, 64) + extra <= stats["bytes"] < _entry_bytes(64, 64) + extra + 4096, stats
        with torch.no_grad():
            w.view(-1)[123] += 1.0                                            # seen either way
            _close(F.conv2d(x, w, padding=1, algorithm="winograd"), TF.conv2d(x, w, padding=1))
