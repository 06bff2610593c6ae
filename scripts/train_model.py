"""Train an embedded model (emq.models.EMBEDDED_MODELS) and write its weights to emq/assets.

Deterministic on one machine: `python scripts/train_model.py --model default` (a few minutes
on 2 cores). `resnet20-fashion` reads Fashion-MNIST from disk (Debian's
`dataset-fashion-mnist` package or a torchvision FashionMNIST/raw directory via --data).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from emq.data import default_data
from emq.mnist_data import load_mnist
from emq.models import EMBEDDED_MODELS

log = logging.getLogger("train_model")
ASSETS = Path(__file__).resolve().parents[1] / "emq" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=sorted(EMBEDDED_MODELS), default="default")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--data", help="for MNIST-format models: the data (default: the model's own, found in the usual places)"
    )
    ap.add_argument("--out", type=Path, help="weights file (default: the model's file in emq/assets)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    spec = EMBEDDED_MODELS[args.model]
    out = args.out or ASSETS / spec.weights
    data = (
        default_data(with_train=True) if spec.data == "default" else load_mnist(args.data or spec.data, with_train=True)
    )
    x, y = data.train.tensors
    model = spec.build()
    steps_per_epoch = (x.shape[0] + 127) // 128
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.2, total_steps=args.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i in range(0, x.shape[0], 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        model.eval()
        with torch.no_grad():
            tx, ty = data.test.tensors
            acc = (model(tx).argmax(1) == ty).float().mean().item() * 100
        log.info(
            "epoch %d  train loss %.4f  test top-1 %.2f%%  (%.0f s)",
            epoch + 1,
            total / x.shape[0],
            acc,
            time.time() - t0,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out)
    log.info("saved %s", out)


if __name__ == "__main__":
    main()
