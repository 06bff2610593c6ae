"""Train an embedded model (emq.models.EMBEDDED_MODELS) and write its weights to emq/assets.

Deterministic on one machine: `python scripts/train_model.py --model default` (a few minutes on 2
cores). MNIST-format models read their data from disk (Fashion-MNIST: Debian's
`dataset-fashion-mnist` package or a torchvision FashionMNIST/raw directory via --data); the
`shapes-rgb` task is generated (emq.shapes_data).

Two recipes, both SGD (momentum 0.9, Nesterov, weight decay 5e-4) with a one-cycle schedule peaking
at the model's `train_lr` (0.2 unless it says otherwise; `--lr`), batch 128, seeded: the four
original networks train for `--epochs` over their training split; the zoo's networks (those with
`train_steps`) train for that many steps on random ±2 px shifts of their training images. Next to
the weights the script writes `<weights>.train.json`: seed, recipe, steps, seconds, the machine's load
and the final test top-1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from emq.data import DataSplits, default_data
from emq.fileio import atomic_write, atomic_write_text
from emq.mnist_data import load_mnist
from emq.models import EMBEDDED_MODELS
from emq.shapes_data import shapes_data

log = logging.getLogger("train_model")
ASSETS = Path(__file__).resolve().parents[1] / "emq" / "assets"
BATCH = 128
SHIFT = 2


def training_data(data: str, override: str | None) -> DataSplits:
    """The model's own data set with its training split."""
    if data == "default":
        return default_data(with_train=True)
    if data == "shapes-rgb":
        return shapes_data(with_train=True)
    return load_mnist(override or data, with_train=True)


def shifted(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The batch, each image moved by a random whole-pixel shift of up to SHIFT (padded with the image minimum)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=float(x.min()))
    dy = torch.randint(0, 2 * SHIFT + 1, (n, 1, 1), generator=gen)
    dx = torch.randint(0, 2 * SHIFT + 1, (n, 1, 1), generator=gen)
    rows = (dy + torch.arange(h).view(1, h, 1)).expand(n, h, w)
    cols = (dx + torch.arange(w).view(1, 1, w)).expand(n, h, w)
    return padded[torch.arange(n).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2).contiguous()


def test_top1(model: torch.nn.Module, data: DataSplits) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in data.test_batches():
            right += int((model(x).argmax(1) == y).sum())
            total += y.numel()
    return 100.0 * right / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(EMBEDDED_MODELS), default="default")
    ap.add_argument("--epochs", type=int, default=12, help="epochs, for the original networks (default 12)")
    ap.add_argument("--steps", type=int, help="SGD steps, for the zoo's networks (default: the model's train_steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, help="the one-cycle schedule's peak (default: the model's train_lr)")
    ap.add_argument(
        "--data", help="for MNIST-format models: the data (default: the model's own, found in the usual places)"
    )
    ap.add_argument("--out", type=Path, help="weights file (default: the model's file in emq/assets)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    spec = EMBEDDED_MODELS[args.model]
    out = args.out or ASSETS / spec.weights
    data = training_data(spec.data, args.data)
    x, y = data.train.tensors
    model = spec.build()
    per_epoch = (x.shape[0] + BATCH - 1) // BATCH
    steps = args.steps or spec.train_steps or args.epochs * per_epoch
    augment = spec.train_steps is not None
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr or spec.train_lr, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    t0, cpu0, step, epoch = time.time(), time.process_time(), 0, 0
    while step < steps:
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        total, seen = 0.0, 0
        for i in range(0, x.shape[0], BATCH):
            if step == steps:
                break
            idx = perm[i : i + BATCH]
            xb = shifted(x[idx], gen) if augment else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach()) * idx.numel()
            seen += idx.numel()
        epoch += 1
        log.info(
            "epoch %d (step %d/%d)  train loss %.4f  test top-1 %.2f%%  (%.0f s)",
            epoch,
            step,
            steps,
            total / max(seen, 1),
            test_top1(model, data),
            time.time() - t0,
        )
    seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
    top1 = test_top1(model, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: torch.save(model.state_dict(), tmp))
    record = {
        "model": args.model,
        "seed": args.seed,
        "data": data.name,
        "train_images": int(x.shape[0]),
        "recipe": {
            "optimizer": "SGD momentum 0.9 nesterov, weight decay 5e-4",
            "schedule": f"one-cycle, peak lr {args.lr or spec.train_lr:g}",
            "batch": BATCH,
            "steps": steps,
            "augmentation": f"random shifts of up to {SHIFT} px" if augment else "none",
        },
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "load_average_at_end": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "test_top1": round(top1, 2),
        "test_images": len(data.test),
    }
    atomic_write_text(out.with_name(out.stem + ".train.json"), json.dumps(record, indent=2) + "\n")
    log.info("saved %s (test top-1 %.2f %%, %.0f s)", out, top1, seconds)


if __name__ == "__main__":
    main()
