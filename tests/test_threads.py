"""Ops called at once from several Python threads give torch's results: the weight cache (shared by
all threads, one weight in use by all of them), the per-thread scratch buffers and the intra-op thread
pools must not mix one caller's data into another's."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F


def _work(seed: int):
    """(name, ours, torch's) for a mix of ops on inputs of its own and one weight shared by all."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 64, 10 + seed % 3, 9, generator=g)
    out = []
    with torch.no_grad():
        for algorithm in ("winograd", "im2col", "direct", "auto"):
            out.append((f"conv2d {algorithm}", F.conv2d(x, SHARED_W, None, 1, 1, algorithm=algorithm),
                        TF.conv2d(x, SHARED_W, None, 1, 1)))
        out.append(("max_pool2d", F.max_pool2d(x, 3, 2, 1), TF.max_pool2d(x, 3, 2, 1)))
        rm, rv = torch.zeros(64), torch.ones(64)
        rm2, rv2 = rm.clone(), rv.clone()
        out.append(("batch_norm", F.batch_norm(x, rm, rv, None, None, True), TF.batch_norm(x, rm2, rv2, None, None,
                                                                                           True)))
        out.append(("running_var", rv, rv2))
        a = torch.randn(37, 64, generator=g)
        out.append(("linear", F.linear(a, SHARED_W[:, :, 0, 0]), TF.linear(a, SHARED_W[:, :, 0, 0])))
        seq = torch.randn(5, 3, 16, generator=g)
        h0 = torch.zeros(1, 3, 32)
        ours, _, _ = F.lstm(seq, (h0, h0), LSTM_WEIGHTS, True, 1, 0.0, False, False, False)
        ref, _, _ = torch.lstm(seq, (h0, h0), LSTM_WEIGHTS, True, 1, 0.0, False, False, False)
        out.append(("lstm", ours, ref))
    xg = x.clone().requires_grad_(True)
    w = SHARED_W.clone().requires_grad_(True)
    F.conv2d(xg, w, None, 1, 1).square().sum().backward()
    xr, wr = x.clone().requires_grad_(True), SHARED_W.clone().requires_grad_(True)
    TF.conv2d(xr, wr, None, 1, 1).square().sum().backward()
    out += [("conv2d grad_input", xg.grad, xr.grad), ("conv2d grad_weight", w.grad, wr.grad)]
    return out


SHARED_W = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(1)) * 0.05
LSTM_WEIGHTS = [t * 0.2 for t in (torch.randn(128, 16), torch.randn(128, 32), torch.randn(128), torch.randn(128))]


def test_ops_from_several_python_threads_match_torch():
    fastconv._C.weight_cache_clear()
    threads, results, errors = [], {}, []

    def run(i):
        try:
            for rep in range(6):
                results[(i, rep)] = _work(i * 10 + rep)
        except Exception as e:  # reported below: an exception in a thread would otherwise be lost
            errors.append(repr(e))

    for i in range(4):
        threads.append(threading.Thread(target=run, args=(i,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 24
    for key, items in results.items():
        for name, ours, ref in items:
            torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3 * (1 + ref.abs().max().item()),
                                       msg=lambda m, key=key, name=name: f"{name} in thread/rep {key}: {m}")
    assert fastconv._C.weight_cache_stats()["hits"] > 0   # the threads shared the cached transform
