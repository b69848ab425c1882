"""The main job, ``python -m fastconv``: LeNet-5 on fastconv's kernels against the identical torch.nn
model, trained side by side on scikit-learn's handwritten digits, then attacked.

1. Both models start from the same weights (built under one seed and checked equal) and see the same
   batches in the same order; each epoch prints loss, test accuracy and seconds for both.
2. The fast gradient sign method (Goodfellow et al. 2015) and projected gradient descent (Madry et al.
   2018) attack the trained fastconv model; their input gradients run through fastconv's backward
   kernels (linear, max-pool, convolution), and are checked against a torch.nn twin holding the same
   trained weights.
3. A PNG shows the loss and accuracy curves of both models, accuracy under attack against epsilon, and a
   row of clean digits above their adversarial versions.

The data ship with scikit-learn (``load_digits``: 1,797 8x8 images); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as TF

from .models import LeNet5

EPSILONS = (0.0, 0.05, 0.1, 0.2)
NAMES = ("fastconv", "torch.nn")


def _require(module: str, extra: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise SystemExit(f"python -m fastconv needs {extra}: pip install {extra}") from exc


def load_digits(seed: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """scikit-learn's digits as (N, 1, 8, 8) float32 in [0, 1], split 75/25, stratified by class."""
    datasets = _require("sklearn.datasets", "scikit-learn")
    model_selection = _require("sklearn.model_selection", "scikit-learn")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = model_selection.train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.25, random_state=seed, stratify=y.numpy())
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return tuple(t.to(device) for t in (x[idx_train], y[idx_train], x[idx_test], y[idx_test]))


@dataclass
class History:
    loss: list[float] = field(default_factory=list)        # mean training loss per epoch
    accuracy: list[float] = field(default_factory=list)    # test accuracy (%) after each epoch
    seconds: list[float] = field(default_factory=list)     # training time per epoch (forward+backward+step)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).sum().item()
    return 100.0 * correct / len(y)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(models: dict, data: tuple, epochs: int, batch_size: int, lr: float, seed: int,
          device: torch.device, progress: bool = True) -> dict[str, History]:
    """Train every model in ``models`` on the same batches in the same order (Adam, cross-entropy)."""
    tqdm = _require("tqdm", "tqdm").tqdm
    x_train, y_train, x_test, y_test = data
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=lr) for name, m in models.items()}
    history = {name: History() for name in models}
    order = torch.Generator().manual_seed(seed)
    steps = (len(y_train) + batch_size - 1) // batch_size
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(y_train), generator=order).to(device)
        totals = {name: 0.0 for name in models}
        seconds = {name: 0.0 for name in models}
        for m in models.values():
            m.train()
        # On a terminal the bar redraws in place; piped into a file or a CI log it still shows, in plain
        # characters and at most every 5 s, so that a long epoch is not silent (--no-progress: off).
        tty = sys.stderr.isatty()
        bar = tqdm(range(steps), desc=f"epoch {epoch:>2}/{epochs}", leave=False, unit="batch", file=sys.stderr,
                   disable=not progress, ascii=not tty, mininterval=0.1 if tty else 5.0)
        for step in bar:
            batch = perm[step * batch_size:(step + 1) * batch_size]
            xb, yb = x_train[batch], y_train[batch]
            for name, model in models.items():
                _sync(device)
                start = time.perf_counter()
                optimizers[name].zero_grad(set_to_none=True)
                loss = TF.cross_entropy(model(xb), yb)
                loss.backward()
                optimizers[name].step()
                _sync(device)
                seconds[name] += time.perf_counter() - start
                totals[name] += loss.item() * len(batch)
            bar.set_postfix({name: f"{totals[name] / ((step * batch_size) + len(batch)):.3f}" for name in models},
                            refresh=tty)
        bar.close()
        cells = []
        for name, model in models.items():
            h = history[name]
            h.loss.append(totals[name] / len(y_train))
            h.accuracy.append(accuracy(model, x_test, y_test))
            h.seconds.append(seconds[name])
            cells.append(f"{name:<8} loss {h.loss[-1]:.4f}  test acc {h.accuracy[-1]:5.1f}%  {h.seconds[-1]:5.2f} s")
        print(f"epoch {epoch:>2}/{epochs} | " + " | ".join(cells), flush=True)
    return history


def input_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(cross-entropy)/d(input): the gradient the attacks follow, through the model's backward."""
    x = x.detach().clone().requires_grad_(True)
    TF.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


def fgsm(model, x, y, eps: float) -> torch.Tensor:
    """One step of size eps along the sign of the input gradient, clipped to the image range [0, 1]."""
    if eps == 0:
        return x
    return (x + eps * input_gradient(model, x, y).sign()).clamp_(0.0, 1.0)


def pgd(model, x, y, eps: float, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Projected gradient descent on the loss, L-infinity ball of radius eps: a random start in the
    ball, then ``steps`` signed steps of 2.5 * eps / steps, each projected back onto the ball and [0, 1]."""
    if eps == 0:
        return x
    noise = torch.rand(x.shape, generator=generator).to(x.device)
    adv = (x + eps * (2 * noise - 1)).clamp_(0.0, 1.0)
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        adv = adv + alpha * input_gradient(model, adv, y).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp_(0.0, 1.0)
    return adv


def attack(model, x, y, pgd_steps: int, seed: int) -> dict:
    """Accuracy (%) of ``model`` under FGSM and PGD at each epsilon, and the adversarial images."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    result = {"fgsm": [], "pgd": [], "images": {}}
    for eps in EPSILONS:
        for name, adv in (("fgsm", fgsm(model, x, y, eps)), ("pgd", pgd(model, x, y, eps, pgd_steps, generator))):
            result[name].append(accuracy(model, adv, y))
            result["images"][(name, eps)] = adv.detach()
    return result


def plot_cnn(fig, history: dict[str, History], attacks: dict, x: torch.Tensor, y: torch.Tensor,
             model: torch.nn.Module, eps: float, count: int = 10) -> None:
    """The CNN part's panels, drawn into ``fig`` (a matplotlib figure or subfigure)."""
    grid = fig.add_gridspec(3, count, height_ratios=[3, 1, 1])
    epochs = range(1, len(next(iter(history.values())).loss) + 1)
    span = count // 3
    ax_loss = fig.add_subplot(grid[0, :span])
    ax_acc = fig.add_subplot(grid[0, span:2 * span])
    ax_adv = fig.add_subplot(grid[0, 2 * span:])
    for name, h in history.items():
        ax_loss.plot(epochs, h.loss, label=name, **STYLES[name])
        ax_acc.plot(epochs, h.accuracy, label=name, **STYLES[name])
    ax_loss.set(title="training loss", xlabel="epoch", yscale="log")
    from matplotlib.ticker import FuncFormatter
    for axis in (ax_loss.yaxis,):   # plain numbers (0.05, 0.1, 2) rather than 5x10^-2 on the log axis
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_acc.set(title="test accuracy (%)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    ax_adv.plot(EPSILONS, attacks["fgsm"], "o-", label="FGSM")
    ax_adv.plot(EPSILONS, attacks["pgd"], "s-", label="PGD")
    ax_adv.set(title="fastconv LeNet-5 under attack", xlabel="epsilon (L-inf radius; pixels range over 0-1)",
               ylabel="test accuracy (%)", ylim=(0, 100))
    ax_adv.legend()
    ax_adv.grid(alpha=0.3)

    adv = attacks["images"][("pgd", eps)]
    model.eval()
    with torch.no_grad():
        clean_pred, adv_pred = model(x[:count]).argmax(1), model(adv[:count]).argmax(1)
    rows = ((x, clean_pred, "clean"), (adv, adv_pred, f"PGD eps={eps}\n(each pixel\n±{eps:g} of 0-1)"))
    for row, (images, preds, title) in enumerate(rows):
        for i in range(count):
            ax = fig.add_subplot(grid[1 + row, i])
            ax.imshow(images[i, 0].cpu(), cmap="gray_r", vmin=0, vmax=1)
            ok = preds[i].item() == y[i].item()
            label = f"{preds[i].item()}" if ok else f"{preds[i].item()} (is {y[i].item()})"
            ax.set_title(label, color="green" if ok else "red", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(title, fontsize=9)
    fig.suptitle("fastconv vs torch.nn: LeNet-5 on scikit-learn digits (image titles: predicted class, "
                 "green when right, red when wrong with the true class)")


def plot_rnn(fig, rnn: dict, count: int = 8) -> None:
    """The RNN part's panels: both char-LMs' loss curves, the captioner's loss and accuracy, and a row of
    captioned test images."""
    from .demo_rnn import caption_text

    grid = fig.add_gridspec(2, 4, height_ratios=[3, 1.3])
    ax_lm = fig.add_subplot(grid[0, :2])
    for name, h in rnn["lm"].items():
        ax_lm.plot([(i + 1) * rnn["lm_report"] for i in range(len(h.loss))], h.loss, label=name, **STYLES[name])
    ax_lm.set(title="char-LSTM language model: training loss", xlabel="step")
    ax_lm.legend()
    ax_lm.grid(alpha=0.3)
    ax_cap = fig.add_subplot(grid[0, 2:])
    steps = [(i + 1) * rnn["cap_report"] for i in range(len(rnn["cap_loss"]))]
    ax_cap.plot(steps, rnn["cap_loss"], "o-", color="tab:blue", label="loss")
    ax_cap.set(title="captioner (fastconv): loss and test sequence accuracy", xlabel="step", yscale="log")
    ax_acc = ax_cap.twinx()
    ax_acc.plot(steps, rnn["cap_acc"], "s--", color="tab:green", label="sequence accuracy (%)")
    ax_acc.set(ylim=(0, 100))
    ax_cap.legend(loc="center left"), ax_acc.legend(loc="center right")
    ax_cap.grid(alpha=0.3)
    sub = grid[1, :].subgridspec(2, count // 2)
    for i in range(min(count, len(rnn["cap_pred"]))):
        ax = fig.add_subplot(sub[i // (count // 2), i % (count // 2)])
        ax.imshow(rnn["cap_images"][i, 0], cmap="gray_r", vmin=0, vmax=1)
        truth, guess = caption_text(rnn["cap_truth"][i]), caption_text(rnn["cap_pred"][i])
        ok = truth == guess
        label = (guess or "(nothing)") if ok else f"{guess or '(nothing)'}\n(is: {truth})"
        ax.set_title(label, color="green" if ok else "red", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("fastconv vs torch.nn: char-level LSTM; CNN + LSTM captioner reading 2-4 digits "
                 "(titles: its captions, green when right, red when wrong with the true caption)")


STYLES = {"fastconv": dict(color="tab:blue", lw=2), "torch.nn": dict(color="tab:orange", lw=1.5, ls="--")}


def plot(path: str, cnn: dict | None, rnn: dict | None) -> None:
    """The figure of the parts that ran: the CNN part's panels above the RNN part's."""
    matplotlib = _require("matplotlib", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in (cnn, rnn) if p is not None]
    heights = [7.5 if cnn is not None else 0, 6.5 if rnn is not None else 0]
    fig = plt.figure(figsize=(12, sum(heights)), layout="constrained")
    subs = fig.subfigures(len(parts), 1, height_ratios=[h for h in heights if h]) if len(parts) > 1 else [fig]
    i = 0
    if cnn is not None:
        plot_cnn(subs[i], **cnn)
        i += 1
    if rnn is not None:
        plot_rnn(subs[i], rnn)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pick_device(name: str) -> torch.device:
    import fastconv

    if name == "auto":
        usable = torch.cuda.is_available() and fastconv.build_info()["cuda_compiled"]
        name = "cuda" if usable else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("python -m fastconv: --device cuda, but no CUDA device is available")
    return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fastconv",
        description="Train LeNet-5 on fastconv and on torch.nn side by side on scikit-learn's digits, attack the "
                    "fastconv model (FGSM, PGD) and plot it all. 'python -m fastconv bench' runs the benchmark.",
        epilog="subcommand: bench [options] -- every op against torch; see 'python -m fastconv bench --help'")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 (--part mixed: 64)")
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate: Adam's (default 2e-3), or SGD's with --part mixed (default 0.05)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations (default 10; --quick: 3)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto (default): the GPU when there is one and fastconv has CUDA kernels")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--png", default="fastconv_digits.png", help="where to write the figure")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: a quarter of the training set, 3 PGD steps (for tests)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--part", choices=["cnn", "rnn", "all", "mixed"], default="all",
                    help="cnn: LeNet-5 and the attacks; rnn: the char-LSTM language model and the captioner; all "
                         "(default): both; mixed: LeNet-5 in float32 and under autocast (bfloat16 on the CPU, "
                         "float16 + GradScaler on a GPU) with float32 master weights, both loss curves in the "
                         "figure")
    return ap


def run_cnn(args, device: torch.device, data: tuple) -> tuple[dict, bool]:
    """The CNN part: LeNet-5 side by side, then the attacks. Returns the figure's inputs and whether
    the two models ended within a point."""
    x_train, y_train, x_test, y_test = data
    print(f"scikit-learn digits: {len(y_train)} training and {len(y_test)} test images of 8x8 pixels, 10 classes")
    models = {}
    for name, backend in zip(NAMES, ("fastconv", "torch")):
        torch.manual_seed(args.seed)
        models[name] = LeNet5(10, input_size=8, backend=backend).to(device)
    ours, ref = models["fastconv"].state_dict(), models["torch.nn"].state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ours), "initial weights differ"
    params = sum(p.numel() for p in models["fastconv"].parameters())
    print(f"LeNet-5 for 8x8 digits, {params:,} parameters, identical initial weights in both; "
          f"Adam lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs\n")

    history = train(models, data, args.epochs, args.batch_size, args.lr, args.seed, device,
                    progress=not args.no_progress)
    final = {name: h.accuracy[-1] for name, h in history.items()}
    total = {name: sum(h.seconds) for name, h in history.items()}
    gap = abs(final["fastconv"] - final["torch.nn"])
    print(f"\nfinal test accuracy: fastconv {final['fastconv']:.1f}%, torch.nn {final['torch.nn']:.1f}% "
          f"(difference {gap:.1f} points: {'within' if gap <= 1.0 else 'NOT within'} 1 point)")
    print(f"training time: fastconv {total['fastconv']:.2f} s, torch.nn {total['torch.nn']:.2f} s")

    model = models["fastconv"]
    twin = LeNet5(10, input_size=8, backend="torch").to(device)
    twin.load_state_dict(model.state_dict())
    model.eval(), twin.eval()
    g_ours, g_ref = input_gradient(model, x_test, y_test), input_gradient(twin, x_test, y_test)
    grad_err = ((g_ours - g_ref).abs().max() / g_ref.abs().max()).item()
    print(f"\ninput gradients through fastconv's backward kernels vs torch.nn's, same trained weights: "
          f"max relative difference {grad_err:.1e}")
    steps = 3 if args.quick else args.pgd_steps
    attacks = attack(model, x_test, y_test, steps, args.seed)
    print(f"adversarial test accuracy of the fastconv model (PGD: {steps} steps of 2.5*eps/{steps}, random start)")
    print("  epsilon  " + "".join(f"{eps:>8.2f}" for eps in EPSILONS))
    for name, label in (("fgsm", "FGSM"), ("pgd", "PGD")):
        print(f"  {label:<9}" + "".join(f"{a:>7.1f}%" for a in attacks[name]))
    return dict(history=history, attacks=attacks, x=x_test, y=y_test, model=model, eps=0.1), gap <= 1.0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mixed = args.part == "mixed"   # SGD with momentum there, Adam in the other parts
    args.lr = args.lr if args.lr is not None else (0.05 if mixed else 2e-3)
    args.batch_size = args.batch_size if args.batch_size is not None else (64 if mixed else 32)
    if args.epochs < 1 or args.batch_size < 1 or args.pgd_steps < 1:
        raise SystemExit("python -m fastconv: --epochs, --batch-size and --pgd-steps must be at least 1")
    import fastconv

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"fastconv {fastconv.__version__} (torch {torch.__version__}) on {device.type}: {where}")
    data = load_digits(args.seed, device)
    if args.quick:
        keep = len(data[1]) // 4
        data = (data[0][:keep], data[1][:keep], data[2], data[3])
    if args.part == "mixed":
        from .demo_mixed import run as run_mixed

        print(f"LeNet-5 on digits, float32 and under autocast, SGD lr {args.lr}, batch {args.batch_size}, "
              f"{args.epochs} epochs")
        runs = run_mixed(args.epochs, args.batch_size, args.lr, device, data, args.seed, os.path.abspath(args.png))
        (loss32, _), (loss16, _) = runs["fp32"], runs["autocast"]
        ok = loss32[-1] < loss32[0] and loss16[-1] < loss16[0]
        print(f"both runs {'learned' if ok else 'did NOT both learn'}: final losses {loss32[-1]:.3f} (float32), "
              f"{loss16[-1]:.3f} (autocast)")
        return 0 if ok else 1
    cnn = rnn = None
    ok = True
    if args.part in ("cnn", "all"):
        cnn, ok = run_cnn(args, device, data)
    if args.part in ("rnn", "all"):
        from .demo_rnn import run as run_rnn

        rnn = run_rnn(args, device, data)
        agree = rnn["lm_gap"] <= 0.01
        print(f"char-LM: final losses {'within' if agree else 'NOT within'} 0.01 of each other "
              f"(difference {rnn['lm_gap']:.1e})")
        ok = ok and agree
    path = os.path.abspath(args.png)
    plot(path, cnn, rnn)
    print(f"\nwrote {path}")
    return 0 if ok else 1
