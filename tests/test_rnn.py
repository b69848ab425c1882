"""LSTM and GRU: fastconv.nn.LSTM / GRU / LSTMCell / GRUCell and the functional API against torch.nn's,
every constructor option, packed and padded input, float64 exactness, float32 on every SIMD variant,
gradcheck, double backward, compile, bad inputs."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastconv
import fastconv.functional as F

MODULES = {"LSTM": (torch.nn.LSTM, fastconv.nn.LSTM), "GRU": (torch.nn.GRU, fastconv.nn.GRU)}
CELLS = {"LSTMCell": (torch.nn.LSTMCell, fastconv.nn.LSTMCell), "GRUCell": (torch.nn.GRUCell, fastconv.nn.GRUCell)}


def _pair(kind: str, *args, device="cpu", dtype=torch.float64, **kwargs):
    """torch's module and fastconv's, built under the same seed (so the same initialisation is checked
    too, not copied)."""
    ref_cls, fc_cls = (MODULES | CELLS)[kind]
    torch.manual_seed(7)
    ref = ref_cls(*args, device=device, dtype=dtype, **kwargs)
    torch.manual_seed(7)
    fc = fc_cls(*args, device=device, dtype=dtype, **kwargs)
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), fc.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), f"{kind}: initialisation differs at {n1}"
    return ref, fc


def _flat(out) -> list[torch.Tensor]:
    """Every tensor of a module's output: (output, h) or (output, (h, c)), output maybe a PackedSequence."""
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        return [out.data]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def _run_both(ref, fc, make_inputs, tol=None):
    """Forward both modules on equal leaf inputs, backward a random projection of every output, and
    compare outputs, input gradients and parameter gradients."""
    tol = tol or {}
    outs, grads = [], []
    for m in (ref, fc):
        m.zero_grad(set_to_none=True)
        inputs = make_inputs()
        if isinstance(inputs, dict):   # {"args": module arguments, "leaves": what they were made from}
            inputs, leaves = inputs["args"], inputs["leaves"]
        else:
            leaves = [t for t in _flat(inputs) if t.requires_grad]
        out = _flat(m(*inputs))
        torch.manual_seed(3)
        loss = sum((o * torch.randn_like(o)).sum() for o in out)
        loss.backward()
        outs.append(out)
        grads.append([t.grad for t in leaves] + [p.grad for p in m.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, **tol)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, **tol)


def _leaf(*shape, device, dtype=torch.float64, packed_lengths=None, batch_first=False):
    torch.manual_seed(11)
    x = torch.randn(*shape, device=device, dtype=dtype)
    return x.requires_grad_(True)


# ------------------------------------------------------------------------------------------------
# LSTM / GRU modules, float64: every option
# ------------------------------------------------------------------------------------------------
OPTIONS = [dict(num_layers=L, bidirectional=bi, bias=bias, batch_first=bf)
           for L, bi, bias, bf in itertools.product([1, 2], [False, True], [True, False], [False, True])]


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("with_state", [False, True])
def test_module_matches_torch(kind, opts, with_state, device):
    T, B, I, H = 4, 3, 5, 6
    ref, fc = _pair(kind, I, H, **opts, device=device)
    D = opts["num_layers"] * (2 if opts["bidirectional"] else 1)

    def inputs():
        x = _leaf(B, T, I, device=device) if opts["batch_first"] else _leaf(T, B, I, device=device)
        if not with_state:
            return (x,)
        torch.manual_seed(5)
        h = torch.randn(D, B, H, device=device, dtype=torch.float64, requires_grad=True)
        if kind == "GRU":
            return x, h
        c = torch.randn(D, B, H, device=device, dtype=torch.float64, requires_grad=True)
        return x, (h, c)

    _run_both(ref, fc, inputs)


@pytest.mark.parametrize("proj", [2, 4])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_projection(proj, bidirectional, device):
    ref, fc = _pair("LSTM", 5, 6, num_layers=2, proj_size=proj, bidirectional=bidirectional, device=device)
    D = 4 if bidirectional else 2

    def inputs():
        torch.manual_seed(5)
        x = _leaf(4, 3, 5, device=device)
        h = torch.randn(D, 3, proj, device=device, dtype=torch.float64, requires_grad=True)
        c = torch.randn(D, 3, 6, device=device, dtype=torch.float64, requires_grad=True)
        return x, (h, c)

    _run_both(ref, fc, inputs)
    assert [n for n, _ in fc.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert "weight_hr_l1_reverse" in dict(fc.named_parameters()) or not bidirectional


def test_three_layers_and_sequence_length_one(device):
    for kind in MODULES:
        ref, fc = _pair(kind, 3, 4, num_layers=3, bidirectional=True, device=device)
        _run_both(ref, fc, lambda: (_leaf(1, 2, 3, device=device),))
        _run_both(ref, fc, lambda: (_leaf(6, 1, 3, device=device),))


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
def test_packed_sequence(kind, enforce_sorted, with_state, device):
    T, B, I, H = 7, 5, 4, 6
    lengths = [7, 5, 5, 2, 1] if enforce_sorted else [2, 7, 1, 5, 5]
    ref, fc = _pair(kind, I, H, num_layers=2, bidirectional=True, device=device)

    def inputs():
        x = _leaf(T, B, I, device=device)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        if not with_state:
            return {"args": (packed,), "leaves": [x]}
        torch.manual_seed(5)
        h = torch.randn(4, B, H, device=device, dtype=torch.float64, requires_grad=True)
        c = torch.randn(4, B, H, device=device, dtype=torch.float64, requires_grad=True)
        return {"args": (packed, h) if kind == "GRU" else (packed, (h, c)), "leaves": [x, h] + ([] if kind == "GRU" else [c])}

    _run_both(ref, fc, inputs)
    out = fc(*inputs()["args"])[0]
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
    padded, lens = pad_packed_sequence(out)
    assert lens.tolist() == lengths and padded.shape == (T, B, 2 * H)


@pytest.mark.parametrize("kind", list(MODULES))
def test_packed_equals_each_sequence_alone(kind, device):
    """A packed batch computes each sequence exactly as if it ran alone for its own length (both
    directions): steps work on their batch_sizes[t] rows only, and a reverse direction starts each
    sequence at its own last token from its own initial state."""
    torch.manual_seed(0)
    m = MODULES[kind][1](4, 5, num_layers=2, bidirectional=True, device=device, dtype=torch.float64)
    lengths = [6, 4, 4, 1]
    x = torch.randn(6, 4, 4, device=device, dtype=torch.float64)
    h0 = torch.randn(4, 4, 5, device=device, dtype=torch.float64)
    state = h0 if kind == "GRU" else (h0, torch.randn_like(h0))
    out, hidden = m(pack_padded_sequence(x, lengths), state)
    padded, _ = pad_packed_sequence(out)
    for b, n in enumerate(lengths):
        alone = state[:, b:b + 1] if kind == "GRU" else tuple(s[:, b:b + 1] for s in state)
        ref_out, ref_hidden = m(x[:n, b:b + 1], alone)
        torch.testing.assert_close(padded[:n, b:b + 1], ref_out)
        for got, want in zip(_flat(hidden), _flat(ref_hidden)):
            torch.testing.assert_close(got[:, b:b + 1], want)


@pytest.mark.parametrize("kind", list(MODULES))
def test_unbatched_input(kind, device):
    ref, fc = _pair(kind, 3, 4, num_layers=2, bidirectional=True, device=device)
    _run_both(ref, fc, lambda: (_leaf(5, 3, device=device),))

    def with_state():
        torch.manual_seed(5)
        h = torch.randn(4, 4, device=device, dtype=torch.float64, requires_grad=True)
        c = torch.randn(4, 4, device=device, dtype=torch.float64, requires_grad=True)
        return (_leaf(5, 3, device=device), h if kind == "GRU" else (h, c))

    _run_both(ref, fc, with_state)


@pytest.mark.parametrize("kind", list(MODULES))
def test_empty_batch(kind, device):
    ref, fc = _pair(kind, 3, 4, device=device)
    x = torch.randn(5, 0, 3, device=device, dtype=torch.float64)
    a, b = _flat(ref(x)), _flat(fc(x))
    for u, v in zip(a, b):
        assert u.shape == v.shape
    with pytest.raises(RuntimeError, match="sequence length"):
        fc(torch.randn(0, 2, 3, device=device, dtype=torch.float64))


@pytest.mark.parametrize("kind", list(MODULES))
def test_float32_every_isa(kind, cpu_isa):
    """float32 against torch on sizes that fill whole vectors and leave a tail (H = 37), in every SIMD
    variant of the step kernels."""
    ref, fc = _pair(kind, 24, 37, num_layers=2, bidirectional=True, dtype=torch.float32)
    _run_both(ref, fc, lambda: (_leaf(9, 6, 24, device="cpu", dtype=torch.float32),),
              tol=dict(rtol=2e-5, atol=2e-5))


def test_nan_propagates_like_torch(device):
    for kind in MODULES:
        ref, fc = _pair(kind, 3, 4, device=device)
        x = torch.randn(4, 2, 3, device=device, dtype=torch.float64)
        x[1, 0, 2] = float("nan")
        a, b = _flat(ref(x)), _flat(fc(x))
        for u, v in zip(a, b):
            assert torch.equal(torch.isnan(u), torch.isnan(v))


def test_module_contract():
    """state_dict names, repr, flatten_parameters, constructor keywords and dropout as torch's."""
    ref, fc = _pair("LSTM", 3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.25, bidirectional=True,
                    proj_size=2, dtype=torch.float32)
    assert repr(fc) == repr(ref)
    assert list(fc.state_dict()) == list(ref.state_dict())
    fc.flatten_parameters()
    fc.load_state_dict(ref.state_dict())
    gru_ref, gru = _pair("GRU", 3, 4, num_layers=3, dropout=0.5, dtype=torch.float32)
    assert repr(gru) == repr(gru_ref)
    # Dropout between layers in training only: two training calls differ, eval calls agree with torch.
    x = torch.randn(5, 2, 3)
    gru.train()
    assert not torch.equal(gru(x)[0], gru(x)[0])
    gru.eval()
    gru_ref.eval()
    torch.testing.assert_close(gru(x)[0], gru_ref(x)[0])


# ------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("form", ["batched", "unbatched", "no_state"])
def test_cell_matches_torch(kind, bias, form, device):
    ref, fc = _pair(kind, 5, 7, bias=bias, device=device)

    def inputs():
        x = _leaf(3, 5, device=device) if form != "unbatched" else _leaf(5, device=device)
        if form == "no_state":
            return (x,)
        torch.manual_seed(5)
        shape = (3, 7) if form == "batched" else (7,)
        h = torch.randn(*shape, device=device, dtype=torch.float64, requires_grad=True)
        c = torch.randn(*shape, device=device, dtype=torch.float64, requires_grad=True)
        return (x, (h, c)) if kind == "LSTMCell" else (x, h)

    _run_both(ref, fc, inputs)


def test_cell_float32_large(cpu_isa):
    for kind in CELLS:
        ref, fc = _pair(kind, 64, 100, dtype=torch.float32)
        _run_both(ref, fc, lambda: (_leaf(33, 64, device="cpu", dtype=torch.float32),), tol=dict(rtol=2e-5, atol=2e-5))


# ------------------------------------------------------------------------------------------------
# gradcheck (float64), compile, double backward
# ------------------------------------------------------------------------------------------------
def test_gradcheck_cells(device):
    torch.manual_seed(0)
    kw = dict(device=device, dtype=torch.float64, requires_grad=True)
    x, h, c = torch.randn(2, 3, **kw), torch.randn(2, 4, **kw), torch.randn(2, 4, **kw)
    w_ih, w_hh, b_ih, b_hh = torch.randn(16, 3, **kw), torch.randn(16, 4, **kw), torch.randn(16, **kw), torch.randn(16, **kw)
    assert torch.autograd.gradcheck(lambda *a: F.lstm_cell(a[0], (a[1], a[2]), *a[3:]), (x, h, c, w_ih, w_hh, b_ih, b_hh))
    g_ih, g_hh, gb_ih, gb_hh = torch.randn(12, 3, **kw), torch.randn(12, 4, **kw), torch.randn(12, **kw), torch.randn(12, **kw)
    assert torch.autograd.gradcheck(F.gru_cell, (x, h, g_ih, g_hh, gb_ih, gb_hh))


@pytest.mark.parametrize("mode", ["lstm", "lstm_proj", "gru"])
def test_gradcheck_two_layer_bidirectional(mode, device):
    torch.manual_seed(0)
    kind = "GRU" if mode == "gru" else "LSTM"
    extra = dict(proj_size=2) if mode == "lstm_proj" else {}
    m = MODULES[kind][1](3, 3, num_layers=2, bidirectional=True, device=device, dtype=torch.float64, **extra)
    params = [p.detach().clone().requires_grad_(True) for p in m._flat_weights]
    x = torch.randn(3, 2, 3, device=device, dtype=torch.float64, requires_grad=True)
    hsize = 2 if extra else 3
    h0 = torch.randn(4, 2, hsize, device=device, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 3, device=device, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def fn(x, h0, c0, *params):
        packed = pack_padded_sequence(x, lengths)
        if kind == "GRU":
            out = F.gru(packed.data, h0, params, True, 2, 0.0, False, True, batch_sizes=packed.batch_sizes)
        else:
            out = F.lstm(packed.data, (h0, c0), params, True, 2, 0.0, False, True, batch_sizes=packed.batch_sizes)
        return out

    assert torch.autograd.gradcheck(fn, (x, h0, c0, *params))


def test_compile_fullgraph():
    """The functional API traces whole; the modules too once dynamo is allowed into RNN modules (it
    refuses every nn.RNNBase subclass by default, torch's own included: torch._dynamo.config.allow_rnn)."""
    torch.manual_seed(0)
    lstm = fastconv.nn.LSTM(8, 16, num_layers=2, bidirectional=True)
    gru = fastconv.nn.GRU(8, 16, batch_first=True)
    x = torch.randn(5, 3, 8)
    h0 = torch.zeros(4, 3, 16)
    lstm_w = [p.detach() for p in lstm._flat_weights]
    gru_w = [p.detach() for p in gru._flat_weights]

    def functional(x):
        out, h, c = F.lstm(x, (h0, h0), lstm_w, True, 2, 0.0, False, True)
        return out.sum() + h.sum() + c.sum() + F.gru_cell(x[0], h0[0], *gru_w).sum()

    torch.testing.assert_close(torch.compile(functional, fullgraph=True)(x), functional(x))

    def modules(x):
        out, (h, c) = lstm(x)
        out2, h2 = gru(x.transpose(0, 1))
        return out.sum() + h.sum() + c.sum() + out2.sum() + h2.sum()

    with torch._dynamo.config.patch(allow_rnn=True):
        torch.testing.assert_close(torch.compile(modules, fullgraph=True)(x), modules(x))


DOUBLE_CASES = {"LSTM": dict(num_layers=2, bidirectional=True), "LSTM-proj": dict(proj_size=2, bidirectional=True),
                "GRU": dict(num_layers=2, bidirectional=True), "LSTMCell": {}, "GRUCell": {}}


@pytest.mark.parametrize("case", list(DOUBLE_CASES))
def test_double_backward_matches_torch(case, device):
    """A gradient penalty — the input's gradient under create_graph=True, squared and backpropagated —
    against torch's modules (cuDNN off on CUDA: its RNN has no double backward), packed input for the
    layers; the initial states passed as one tensor twice (hx and cx the same zeros) for the LSTM cell."""
    kind = case.split("-")[0]
    cell = kind.endswith("Cell")
    ref, fc = _pair(kind, 3, 4, device=device, **DOUBLE_CASES[case])
    results = []
    for m in (ref, fc):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        if cell:
            x = torch.randn(3, 3, device=device, dtype=torch.float64, requires_grad=True)
            z = torch.randn(3, 4, device=device, dtype=torch.float64, requires_grad=True)
            args = (x, (z, z)) if kind == "LSTMCell" else (x, z)
            leaves = [x, z]
        else:
            x = torch.randn(5, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
            args, leaves = (pack_padded_sequence(x, [5, 3, 2]),), [x]
        with torch.backends.cudnn.flags(enabled=False):
            out = _flat(m(*args))
            torch.manual_seed(3)
            loss = sum((o * torch.randn_like(o)).sum() for o in out)
            firsts = torch.autograd.grad(loss, leaves + [next(m.parameters())], create_graph=True)
            (sum(g.square().sum() for g in firsts) + loss).backward()
        results.append([t.detach() for t in firsts] + [t.grad for t in leaves] + [p.grad for p in m.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_gradgradcheck_cells_and_reverse(mode, device):
    """gradgradcheck (float64) of a cell (functional API) and of one reverse packed LSTM layer with a
    projection and one bias (the layer op)."""
    torch.manual_seed(0)
    kw = dict(device=device, dtype=torch.float64, requires_grad=True)
    G = 4 if mode == "lstm" else 3
    x, h, c = torch.randn(2, 3, **kw), torch.randn(2, 4, **kw), torch.randn(2, 4, **kw)
    w = [torch.randn(G * 4, 3, **kw), torch.randn(G * 4, 4, **kw), torch.randn(G * 4, **kw), torch.randn(G * 4, **kw)]
    if mode == "lstm":
        assert torch.autograd.gradgradcheck(lambda *a: F.lstm_cell(a[0], (a[1], a[2]), *a[3:]), (x, h, c, *w))
        w_hh, w_hr, h2 = torch.randn(16, 2, **kw), torch.randn(2, 4, **kw), torch.randn(2, 2, **kw)
        xs, steps = torch.randn(5, 3, **kw), torch.tensor([2, 2, 1])
        assert torch.autograd.gradgradcheck(
            lambda xs, h2, c, w_ih, w_hh, b, w_hr: fastconv.ops.lstm_layer(xs, steps, h2, c, w_ih, w_hh, b, None, w_hr,
                                                                           True)[:3],
            (xs, h2, c, w[0], w_hh, w[2], w_hr))
    else:
        assert torch.autograd.gradgradcheck(F.gru_cell, (x, h, *w))


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_backward_ops_are_differentiable(mode, device):
    """The raw backward ops, fed what their forward op made of the same inputs, are differentiable in
    every input (their biases included, which their kernels do not read: the saved gates hold them):
    gradcheck (float64) of forward-then-backward as one function, reverse and packed, LSTM with a
    projection."""
    torch.manual_seed(0)
    kw = dict(device=device, dtype=torch.float64, requires_grad=True)
    steps, G, P = torch.tensor([3, 2, 2]), (4 if mode == "lstm" else 3), (2 if mode == "lstm" else 4)
    x, h, c = torch.randn(7, 3, **kw), torch.randn(3, P, **kw), torch.randn(3, 4, **kw)
    w_ih, w_hh, b_ih, b_hh = (torch.randn(G * 4, 3, **kw), torch.randn(G * 4, P, **kw), torch.randn(G * 4, **kw),
                              torch.randn(G * 4, **kw))
    w_hr = torch.randn(2, 4, **kw)
    torch.manual_seed(1)
    g_out, g_h, g_c = torch.randn(7, P, **kw), torch.randn(3, P, **kw), torch.randn(3, 4, **kw)
    if mode == "lstm":
        def fn(g_out, g_h, g_c, x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr):
            out, _, _, ws = torch.ops.fastconv.lstm_layer(x, steps, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, True)
            return torch.ops.fastconv.lstm_layer_backward(g_out, g_h, g_c, x, steps, h, c, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                          out, ws, True, [True, True, True])
        args = (g_out, g_h, g_c, x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
    else:
        def fn(g_out, g_h, x, h, w_ih, w_hh, b_ih, b_hh):
            out, _, ws = torch.ops.fastconv.gru_layer(x, steps, h, w_ih, w_hh, b_ih, b_hh, True)
            return torch.ops.fastconv.gru_layer_backward(g_out, g_h, x, steps, h, w_ih, w_hh, b_ih, b_hh, out, ws, True,
                                                         [True, True, True])
        args = (g_out, g_h, x, h, w_ih, w_hh, b_ih, b_hh)
    assert torch.autograd.gradcheck(fn, args)


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_module():
    lstm, gru = fastconv.nn.LSTM(3, 4), fastconv.nn.GRU(3, 4)
    cell = fastconv.nn.LSTMCell(3, 4)
    with pytest.raises(RuntimeError, match=r"fastconv.nn.LSTM: .*input.size\(-1\) must be equal to input_size"):
        lstm(torch.randn(5, 2, 7))
    with pytest.raises(RuntimeError, match=r"fastconv.nn.GRU: Expected hidden size"):
        gru(torch.randn(5, 2, 3), torch.randn(1, 3, 4))
    with pytest.raises(RuntimeError, match=r"fastconv.nn.LSTM: .*hidden"):
        lstm(torch.randn(5, 2, 3), (torch.randn(1, 2, 4), torch.randn(1, 2, 5)))
    with pytest.raises(ValueError, match=r"fastconv.nn.LSTM: LSTM: Expected input to be 2D or 3D"):
        lstm(torch.randn(5))
    with pytest.raises(RuntimeError, match=r"fastconv.nn.LSTMCell: fastconv.lstm_cell: input has 5 features"):
        cell(torch.randn(2, 5))
    with pytest.raises(RuntimeError, match=r"fastconv.lstm_cell: expected hx\[1\] of shape \(2, 4\)"):
        cell(torch.randn(2, 3), (torch.randn(2, 4), torch.randn(3, 4)))
    with pytest.raises(RuntimeError, match=r"fastconv.nn.GRUCell: fastconv::gru_layer: expected input to be "
                                           r"float32 or float64, but got Long"):
        fastconv.nn.GRUCell(3, 4)(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"fastconv.nn.GRU: RNN input dtype \(torch.float64\) does not match weight"):
        fastconv.nn.GRU(3, 4)(torch.randn(5, 2, 3, dtype=torch.float64))   # torch's check, torch's type
    with pytest.raises(RuntimeError, match=r"fastconv::lstm_layer: expected weight_ih of dtype"):
        F.lstm_cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 4)), torch.randn(16, 3, dtype=torch.float64),
                    torch.randn(16, 4))


def test_inconsistent_batch_sizes_raise():
    x, h = torch.randn(6, 3), torch.zeros(3, 4)
    w_ih, w_hh = torch.randn(12, 3), torch.randn(12, 4)
    op = torch.ops.fastconv.gru_layer
    with pytest.raises(RuntimeError, match="non-increasing"):
        op(x, torch.tensor([2, 3, 1]), h[:2], w_ih, w_hh, None, None, False)
    with pytest.raises(RuntimeError, match="sum to 5 rows, but the input has 6"):
        op(x, torch.tensor([3, 1, 1]), h, w_ih, w_hh, None, None, False)
    with pytest.raises(RuntimeError, match=r"expected hx of shape \(3, 4\)"):
        op(x, torch.tensor([3, 3]), h[:2], w_ih, w_hh, None, None, False)
    with pytest.raises(RuntimeError, match="1-D int64 tensor"):
        op(x, torch.tensor([3.0, 3.0]), h, w_ih, w_hh, None, None, False)


def test_convert_swaps_recurrent_layers():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 4, num_layers=2, proj_size=2, bidirectional=True, dropout=0.1)
            self.gru = torch.nn.GRU(4, 5, batch_first=True, bias=False)
            self.cells = torch.nn.ModuleList([torch.nn.LSTMCell(5, 6), torch.nn.GRUCell(6, 7)])

        def forward(self, x):
            out, _ = self.lstm(x)
            out, _ = self.gru(out.transpose(0, 1))
            h, _ = self.cells[0](out[:, -1])
            return self.cells[1](h)

    torch.manual_seed(0)
    net = Net().double().eval()
    fast = fastconv.convert(net)
    assert [type(m) for m in (fast.lstm, fast.gru, *fast.cells)] == [
        fastconv.nn.LSTM, fastconv.nn.GRU, fastconv.nn.LSTMCell, fastconv.nn.GRUCell]
    assert repr(fast.lstm) == repr(net.lstm) and not fast.training
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(fast(x), net(x))
    before = net.lstm.weight_hr_l1_reverse
    same = fastconv.convert(net.train(), inplace=True)   # the same parameter objects, for an optimizer
    assert type(same.lstm) is fastconv.nn.LSTM and same.lstm.weight_hr_l1_reverse is before and same.lstm.training


def test_weight_cache_keeps_parameters_not_per_call_copies():
    """Under no_grad a cell's packed weights are kept from their second call on (the first may be a
    tensor made for that call alone); the float32 copies that a bfloat16 cell makes on every call are
    never kept (each would cost an allocation and a digest, and die)."""
    torch.manual_seed(0)
    x, h = torch.randn(4, 8), (torch.randn(4, 16), torch.randn(4, 16))
    for dtype, entries in ((torch.float32, 2), (torch.bfloat16, 0)):
        cell = fastconv.nn.LSTMCell(8, 16, dtype=dtype)
        fastconv._C.weight_cache_clear()
        with torch.no_grad():
            outs = [cell(x.to(dtype), tuple(t.to(dtype) for t in h)) for _ in range(3)]
        stats = fastconv._C.weight_cache_stats()
        assert (stats["entries"], stats["misses"], stats["hits"]) == (entries, entries, entries), (dtype, stats)
        for out in outs[1:]:
            torch.testing.assert_close(out, outs[0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "LSTM", "GRU"])
def test_no_stale_packed_weights(kind):
    """In inference the packed weights are kept in the weight cache (hits counted) and every write to a
    weight shows in the next call — through .data, which no version counter sees, in place under
    no_grad, a copy_ — as do writes in training, where nothing is kept."""
    torch.manual_seed(0)
    cell = kind.endswith("Cell")
    ref, fc = _pair(kind, 8, 40, dtype=torch.float32, **({} if cell else dict(num_layers=2)))
    x = torch.randn(5, 8) if cell else torch.randn(3, 5, 8)
    name = "weight_hh" if cell else "weight_hh_l1"
    writes = (lambda m: getattr(m, name).data.mul_(0.5), lambda m: getattr(m, name.replace("hh", "ih")).add_(0.1),
              lambda m: getattr(m, name).data.copy_(torch.randn_like(getattr(m, name))))
    fastconv._C.weight_cache_clear()
    with torch.no_grad():
        torch.testing.assert_close(_flat(fc(x)), _flat(ref(x)))
        for write in writes:
            torch.manual_seed(1)
            write(ref)
            torch.manual_seed(1)
            write(fc)
            hits = fastconv._C.weight_cache_stats()["hits"]
            torch.testing.assert_close(_flat(fc(x)), _flat(ref(x)))
            torch.testing.assert_close(_flat(fc(x)), _flat(ref(x)))
            assert fastconv._C.weight_cache_stats()["hits"] > hits   # the second call found its packed weights
    torch.manual_seed(2)
    writes[2](ref)
    torch.manual_seed(2)
    writes[2](fc)
    torch.testing.assert_close(_flat(fc(x)), _flat(ref(x)))