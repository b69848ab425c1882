"""Mixed-precision training with fastconv: the same LeNet-5 trained twice on scikit-learn's digits
(nothing downloaded), once in float32 and once under torch.autocast — bfloat16 on the CPU, float16
with a GradScaler on a GPU — with float32 master weights, and both loss curves plotted. The work is
fastconv.demo_mixed's (also the main job's ``python -m fastconv --part mixed``).

    python examples/mixed_precision_train.py                       # CPU, bfloat16
    python examples/mixed_precision_train.py --device cuda         # GPU, float16 + GradScaler
    python examples/mixed_precision_train.py --epochs 2 --png ""   # quick, no figure

Prints both runs' losses and test accuracies per epoch.
"""

from __future__ import annotations

import argparse

import torch

from fastconv.demo import load_digits
from fastconv.demo_mixed import run


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default="mixed_precision_loss.png", help="the loss-curve figure ('' for none)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    return run(args.epochs, args.batch, args.lr, device, load_digits(args.seed, device), args.seed, args.png)


if __name__ == "__main__":
    main()
