"""The main job's mixed-precision part (``python -m fastconv --part mixed``), also behind
examples/mixed_precision_train.py: the same LeNet-5 trained twice on scikit-learn's digits, once in
float32 and once under torch.autocast — bfloat16 on the CPU, float16 with a GradScaler on a GPU — with
float32 master weights, and both loss curves plotted.

Under autocast fastconv's convolutions and linear layers run in the low precision (float32
accumulation), batch norm and pooling take the half activations with float32 parameters, and the
optimiser updates the float32 weights: "many operations can be performed in 16 bit mode with little
change in accuracy; variables and some operations should be kept in 32 bits". The loss is computed in
float32."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .models import LeNet5


def train(mode: str, epochs: int, batch: int, lr: float, device: torch.device, data, seed: int):
    """Per-epoch mean training losses and test accuracies of one run; mode 'fp32' or 'autocast'."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = LeNet5(input_size=8).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    low = torch.bfloat16 if device.type == "cpu" else torch.float16
    use_autocast = mode == "autocast"
    # float16's narrow range needs the loss scaled so small gradients do not underflow; bfloat16 has
    # float32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=use_autocast and low == torch.float16)
    g = torch.Generator().manual_seed(seed)
    losses, accuracies = [], []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=g).to(device)
        total, count = 0.0, 0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            with torch.autocast(device.type, dtype=low, enabled=use_autocast):
                logits = model(x_train[idx])
            loss = F.cross_entropy(logits.float(), y_train[idx])   # the loss in float32
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.item() * len(idx)
            count += len(idx)
        losses.append(total / count)
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=low, enabled=use_autocast):
            accuracies.append(100.0 * (model(x_test).argmax(1) == y_test).float().mean().item())
    assert all(p.dtype == torch.float32 for p in model.parameters())   # the master weights stay float32
    return losses, accuracies


def run(epochs: int, batch: int, lr: float, device: torch.device, data, seed: int, png: str | None) -> dict:
    """Both runs, one line each with its time, per-epoch losses and final test accuracy; the figure of
    both loss curves written to `png` unless it is empty. Returns {mode: (losses, accuracies)}."""
    runs = {}
    for mode in ("fp32", "autocast"):
        start = time.perf_counter()
        runs[mode] = train(mode, epochs, batch, lr, device, data, seed)
        print(f"{mode:>8}: {time.perf_counter() - start:.1f} s; loss per epoch "
              f"{' '.join(f'{v:.3f}' for v in runs[mode][0])}; final test accuracy {runs[mode][1][-1]:.1f}%")
    if png:
        plot(png, runs, device)
        print(f"wrote {png}")
    return runs


def plot(path: str, runs: dict, device: torch.device) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    low = "bfloat16" if device.type == "cpu" else "float16 + GradScaler"
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(runs["fp32"][0]) + 1)
    ax.plot(epochs, runs["fp32"][0], marker="o", label=f"float32 (test {runs['fp32'][1][-1]:.1f}%)")
    ax.plot(epochs, runs["autocast"][0], marker="s", linestyle="--",
            label=f"autocast {low} (test {runs['autocast'][1][-1]:.1f}%)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.set_yscale("log")
    ax.set_title(f"fastconv LeNet-5 on digits ({device.type}): float32 vs mixed precision")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
