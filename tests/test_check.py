"""`python -m fastconv check`: the correctness suite as a user command. It passes here (quick mode in
CI: the full run is in device_check.sh and takes ~10 s on a 2-vCPU CPU), and it reports, rather than
hides, a wrong result or a crash."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

import fastconv.functional as F
from fastconv.check import CASES, Case, main, run


def test_quick_check_passes_and_writes_json(tmp_path):
    path = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "fastconv", "check", "--quick", "--json", str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(path.read_text())
    assert report["failed"] == 0 and report["passed"] == sum(c.quick for c in CASES) >= 25
    assert "passed in" in proc.stdout and "FAIL" not in proc.stdout
    families = {r["case"].split()[0] for r in report["results"]}
    assert {"conv2d", "max_pool2d", "batch_norm", "linear", "LSTM", "GRU", "LSTMCell", "GRUCell"} <= families


def test_quick_check_in_process(device):
    report = run(device, quick=True, out=io.StringIO())
    assert report["failed"] == 0, [r for r in report["results"] if not r["passed"]]


def _wrong(device, dtype):   # conv2d with one output element off by 1e-3
    def ours(x, w):
        y = F.conv2d(x, w).clone()
        y.view(-1)[5] += 1e-3
        return y
    x, w = torch.randn(1, 2, 5, 5, dtype=dtype), torch.randn(3, 2, 3, 3, dtype=dtype)
    return ours, torch.nn.functional.conv2d, [x, w], []


def _crash(device, dtype):
    return (lambda x: F.max_pool2d(x, 9)), (lambda x: torch.nn.functional.max_pool2d(x, 9)), [torch.randn(1, 1, 4, 4)], []


def test_wrong_answers_and_crashes_are_reported():
    out = io.StringIO()
    report = run("cpu", quick=True, cases=[Case("wrong", _wrong, quick=True), Case("crash", _crash, quick=True)],
                 out=out)
    assert report["failed"] == report["passed"] + report["failed"] == 2
    wrong, crash = report["results"]
    assert wrong["forward_error"] > wrong["tolerance"] and wrong["error"] is None
    assert crash["error"].startswith("RuntimeError")
    text = out.getvalue()
    assert "FAILED: wrong" in text and "FAILED: crash" in text and "0 of 2 passed" in text


def test_cuda_without_a_device_is_an_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
