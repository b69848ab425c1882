"""Train fastconv's ResNet-18 with DistributedDataParallel, one process per device.

    torchrun --nproc_per_node 2 examples/ddp_train.py                 # two CPU processes, gloo
    torchrun --nproc_per_node 8 examples/ddp_train.py --device cuda   # one process per GPU, nccl

The data are generated, not downloaded: 10 classes of 32x32 RGB images, each class a fixed random
pattern plus noise, so the loss has something to learn. Every process draws its share of each
batch through a DistributedSampler; DDP averages the gradients, so the steps are those of one process
on the concatenated batch (tests/test_ddp.py checks exactly that). Batch norm normalises with each
process's own batch statistics, as torch.nn.BatchNorm2d does under DDP without SyncBatchNorm; the
running statistics are broadcast from rank 0 at every forward (DDP's broadcast_buffers).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from fastconv.models import ResNet18


def synthetic_images(count: int, classes: int, side: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 3, side, side, generator=g)
    labels = torch.randint(0, classes, (count,), generator=g)
    images = patterns[labels] + 1.5 * torch.randn(count, 3, side, side, generator=g)
    return TensorDataset(images, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=512, help="size of the generated training set")
    ap.add_argument("--batch-size", type=int, default=32, help="per process")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--backend", choices=["fastconv", "torch"], default="fastconv",
                    help="fastconv's layers or the identical torch.nn model, for comparison")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1)")
    args = ap.parse_args()

    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        torch.set_num_threads(args.threads)
        device = torch.device("cpu")

    torch.manual_seed(0)   # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = ResNet18(num_classes=10, stem="cifar", backend=args.backend).to(device)
    model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)

    data = synthetic_images(args.samples, 10, 32, seed=1)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=2)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    if rank == 0:
        print(f"{world} process(es) on {args.device} ({dist.get_backend()}), ResNet-18 ({args.backend}), "
              f"{len(loader)} steps of {args.batch_size} x {world} images per epoch")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        start, seen, total = time.perf_counter(), 0, torch.zeros((), device=device)
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(labels)
            seen += len(labels)
        dist.all_reduce(total)
        if args.device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}: mean loss {total.item() / (seen * world):.4f}, "
                  f"{seen * world / elapsed:.1f} images/s")
    dist.barrier()   # no rank tears gloo down while another is still in a collective (that aborts it)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
