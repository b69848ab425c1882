"""The main job (python -m fastconv) end to end in its short mode, its attacks, and the benchmark
subcommand's outputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sklearn", reason="the main job needs scikit-learn (requirements-ci.txt installs it)")
pytest.importorskip("matplotlib", reason="the main job needs matplotlib (requirements-ci.txt installs it)")

from fastconv import demo  # noqa: E402
from fastconv.models import LeNet5  # noqa: E402


def _run(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "fastconv", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _png_shape(path):
    import matplotlib.image

    return matplotlib.image.imread(path).shape


def test_main_job_quick(tmp_path):
    png = tmp_path / "digits.png"
    proc = _run(["--epochs", "1", "--quick", "--device", "cpu", "--png", str(png)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "identical initial weights" in out
    assert re.search(r"epoch  1/1 \| fastconv .* \| torch\.nn ", out), out
    final = re.search(r"final test accuracy: fastconv ([\d.]+)%, torch\.nn ([\d.]+)%", out)
    assert final and abs(float(final[1]) - float(final[2])) <= 1.0, out
    grad = re.search(r"max relative difference ([\d.e+-]+)", out)
    assert grad and float(grad[1]) < 1e-4, out
    for attack in ("FGSM", "PGD"):
        row = re.search(rf"^  {attack} +((?:[\d.]+% *){{4}})$", out, re.M)
        assert row, out
        accs = [float(a) for a in re.findall(r"[\d.]+", row[1])]
        assert accs[0] == pytest.approx(float(final[1]))   # epsilon 0 is the clean accuracy
    # the RNN part: both char-LMs report the same losses; the captioner trains and captions
    lm = re.findall(r"^step +\d+/10 \| fastconv loss ([\d.]+) .*\| torch\.nn loss ([\d.]+)", out, re.M)
    assert len(lm) == 2 and all(a == b for a, b in lm), out
    assert "char-LM: final losses within 0.01" in out and "sample from the fastconv model" in out
    assert re.search(r"^step +60/60 \| loss [\d.]+  test sequence accuracy +[\d.]+%$", out, re.M), out
    assert len(re.findall(r" -> .* (ok|WRONG)$", out, re.M)) == 6, out
    assert f"wrote {png}" in out
    h, w, _ = _png_shape(png)
    assert h > 1000 and w > 600   # both parts' panels


def test_bench_subcommand_writes_json_and_png(tmp_path):
    proc = _run(["bench", "--quick", "--ops", "max_pool2d", "--rounds", "1", "--threads", "1"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "fastconv-bench-cpu.json").read_text())
    assert data["meta"]["threads"] == 1 and data["rows"]
    assert {r["op"] for r in data["rows"]} == {"max_pool2d fwd", "max_pool2d fwd+bwd"}
    assert all(r["suite"] == "max_pool2d" for r in data["rows"])
    assert _png_shape(tmp_path / "fastconv-bench-cpu.png")[0] > 100


def test_bench_dtypes_filter(tmp_path):
    proc = _run(["bench", "--quick", "--ops", "gemm", "--dtypes", "bfloat16", "--rounds", "1", "--threads", "1"],
                tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "fastconv-bench-cpu.json").read_text())
    assert data["rows"] and {r["dtype"] for r in data["rows"]} == {"bfloat16"}
    assert data["meta"]["dtypes"] == ["bfloat16"]


def test_console_script():
    script = os.path.join(os.path.dirname(sys.executable), "fastconv")
    if not os.path.exists(script):
        pytest.skip("fastconv is not installed with its console scripts in this environment")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--epochs" in proc.stdout and "bench" in proc.stdout


@pytest.fixture(scope="module")
def digits_model():
    torch.manual_seed(0)
    model = LeNet5(10, input_size=8).eval()
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    return model, x, y


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_attacks_stay_in_the_ball_and_the_image_range(digits_model, eps):
    model, x, y = digits_model
    adv_fgsm = demo.fgsm(model, x, y, eps)
    adv_pgd = demo.pgd(model, x, y, eps, steps=3, generator=torch.Generator().manual_seed(0))
    for adv in (adv_fgsm, adv_pgd):
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
    # FGSM moves every pixel by exactly eps along the gradient's sign unless the range clips it
    grad = demo.input_gradient(model, x, y)
    free = (x + eps * grad.sign() >= 0) & (x + eps * grad.sign() <= 1) & (grad != 0)
    torch.testing.assert_close((adv_fgsm - x)[free], eps * grad.sign()[free])
    # and it raises the loss
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(model(adv_fgsm), y) > loss(model(x), y)
        assert loss(model(adv_pgd), y) > loss(model(x), y)


def test_input_gradient_matches_torch_twin(digits_model):
    model, x, y = digits_model
    twin = LeNet5(10, input_size=8, backend="torch").eval()
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(demo.input_gradient(model, x, y), demo.input_gradient(twin, x, y),
                               rtol=1e-4, atol=1e-6)


def test_rnn_part_alone(tmp_path):
    png = tmp_path / "rnn.png"
    proc = _run(["--part", "rnn", "--quick", "--device", "cpu", "--png", str(png)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LeNet-5" not in proc.stdout and "CNN + LSTM captioner" in proc.stdout
    assert _png_shape(png)[0] > 300


def test_numbers_and_captions():
    from fastconv import demo_rnn

    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 1, 8, 8) / 10
    labels = torch.arange(10)
    canvas, words = demo_rnn.make_numbers(images, labels, 50, torch.Generator().manual_seed(0))
    assert canvas.shape == (50, 1, 8, 32) and words.shape == (50, 5)
    for img, w in zip(canvas, words):
        n = int((w == demo_rnn.EOS).nonzero()[0])
        assert 2 <= n <= 4 and (w[n + 1:] == demo_rnn.PAD).all()
        for d in range(n):   # each 8x8 block shows the digit its word names; blank after the number
            assert torch.allclose(img[0, :, 8 * d:8 * d + 8], torch.full((8, 8), float(w[d]) / 10))
        assert (img[0, :, 8 * n:] == 0).all()
    assert demo_rnn.caption_text(words[0]).split() == [demo_rnn.WORDS[int(i)] for i in words[0][:len(
        demo_rnn.caption_text(words[0]).split())]]
    wrong = words.clone()
    wrong[:25, 0] = (wrong[:25, 0] + 1) % 10
    assert demo_rnn.sequence_accuracy(words, words) == 100.0
    assert demo_rnn.sequence_accuracy(wrong, words) == 50.0


def test_bench_help_is_quiet(tmp_path):
    """torch.utils.benchmark's import of torch.utils.cpp_extension logs "No CUDA runtime is found" on a
    CUDA build of torch without a GPU; fastconv's benchmark keeps it off the screen."""
    proc = _run(["bench", "--help"], tmp_path)
    assert proc.returncode == 0 and "--ops" in proc.stdout, proc.stdout + proc.stderr
    assert "No CUDA runtime" not in proc.stdout + proc.stderr


def test_require_cuda_turns_cuda_skips_into_failures(tmp_path):
    """FASTCONV_REQUIRE_CUDA=1 (scripts/device_check.sh) fails a CUDA case that cannot run."""
    from conftest import _cuda_usable

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FASTCONV_REQUIRE_CUDA="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_ops_contract.py::test_opcheck[cuda-fastconv::gemm]"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if _cuda_usable():
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        assert proc.returncode != 0 and "FASTCONV_REQUIRE_CUDA=1, but no CUDA device" in proc.stdout, proc.stdout


def test_main_job_mixed_precision_part(tmp_path):
    """python -m fastconv --part mixed: LeNet-5 in float32 and under autocast (bfloat16 on the CPU), both
    learn with the curves together, the figure written, exit status 0."""
    png = tmp_path / "mixed.png"
    r = _run(["--part", "mixed", "--epochs", "6", "--device", "cpu", "--png", str(png), "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    losses = {m.group(1): [float(v) for v in m.group(2).split()]
              for m in re.finditer(r"^\s*(fp32|autocast): [\d.]+ s; loss per epoch ([\d. ]+);", r.stdout, re.M)}
    assert set(losses) == {"fp32", "autocast"}, r.stdout
    for curve in losses.values():
        assert curve[-1] < 0.8 * curve[0], r.stdout
    assert abs(losses["autocast"][-1] - losses["fp32"][-1]) < 0.05 * losses["fp32"][-1], r.stdout
    assert png.stat().st_size > 0


def test_bench_models_section_runs_both_sides():
    """The --models section: each case's two sides run (eval first, on the same weights: the converted
    model's logits match torch's), then a training step each, which moves the weights of each copy and
    keeps them finite."""
    pytest.importorskip("torchvision", reason="the models section needs torchvision (requirements-ci.txt)")
    from fastconv.bench.suites import model_cases

    cases = model_cases("cpu", quick=True)
    assert len(cases) == 12   # 3 models x 2 memory formats x (train step, eval)
    for case in cases:
        if case.op.endswith("eval"):
            ours, ref = case.fastconv(), case.torch()
            torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3 * (1 + ref.abs().max().item()))
    for case in cases:
        if case.op.endswith("train step"):
            for run in (case.fastconv, case.torch):
                params = list(run.model.parameters())
                before = [p.detach().clone() for p in params]
                run()
                assert any(not torch.equal(a, p) for a, p in zip(before, params)), case.op
                assert all(torch.isfinite(p).all() for p in params), case.op


def test_bench_times_a_very_slow_side_by_one_call(monkeypatch):
    """A side whose warm-up call takes over SLOW_CALL_S (torch's half-precision GEMM on an AVX2-only CPU:
    53 s a call at 2048^3) is called once (that call is its time), the other side as usual, and the row
    says so; rows under the limit are timed in interleaved rounds. Counts calls, asserts no speed."""
    import time

    from fastconv.bench import runner

    monkeypatch.setattr(runner, "SLOW_CALL_S", 0.05)
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.1)

    rows = runner.run_cases([runner.Case(op="x", shape="s", dtype="float32", fastconv=fast, torch=slow)], rounds=3,
                            min_run_time=0.01, log=lambda *a: None)
    assert calls["slow"] == 1 and calls["fast"] > 1
    assert "one warm-up call" in rows[0]["timing"]
    calls.update(fast=0, slow=0)
    rows = runner.run_cases([runner.Case(op="x", shape="s", dtype="float32", fastconv=fast, torch=fast)], rounds=3,
                            min_run_time=0.01, log=lambda *a: None)
    assert "timing" not in rows[0] and calls["fast"] > 6
