"""Data sets: the embedded default task and user image folders / CIFAR-10, never downloaded.

The embedded default is derived from scikit-learn's bundled UCI digits (1,797 8x8 images).
Plain 8x8 digits saturate under quantization (every bit-width scores about the same), so every
source image is rendered several times at 24x24 px with a random affine distortion and additive noise, which
makes the task hard enough for bit-widths to matter. Splits are made by *source* image, so no
digit leaks from training into calibration or test data.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

# DataSplits and DEFAULT_CALIB_SIZE live in emq.datasplits and are re-exported here
from .datasplits import DEFAULT_CALIB_SIZE as DEFAULT_CALIB_SIZE
from .datasplits import DEFAULT_SEED, DataSplits
from .errors import EmqError
from .hashing import tensor_digest
from .mnist_data import is_mnist_spec, load_mnist
from .specs import ParameterError

DEFAULT_SIZE = 24
# source images per split (1,797 in all) and renderings per source image
DIGITS_COUNT = 1797
DEFAULT_SPLIT_SOURCES = {"train": 1097, "calib": 200, "test": 500}
DEFAULT_RENDERS = {"train": 24, "calib": 6, "test": 6}
# the fingerprint of the default task per seed (DataSplits.fingerprint says why it is fixed), the
# digest of the reference rendering that the shipped benches were built on; other seeds are
# identified by the digest of their images. tests/test_generated_data.py checks a rendering against it.
GENERATED_FINGERPRINTS = {DEFAULT_SEED: "2b89bb1369651d24"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# `--data` values computed inside emq (nothing to install): their bundles may ship partial statistics
SHIPPED_DATA = ("default", "shapes-rgb")


def _affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """`F.affine_grid(theta, [m, 1, size, size], align_corners=False)` in elementwise float32 ops.

    affine_grid multiplies through BLAS, and MKL's AVX-512 kernels round differently from its
    AVX2 ones, so the rendered images (and the data fingerprint every digits bench records)
    depended on the CPU. Separate multiplies and adds round the same on every CPU and equal
    the AVX2 result bit for bit, which is what the shipped benches were built on."""
    lin = torch.linspace(-1, 1, size) * (size - 1) / size  # affine_grid's base grid, in its own two steps
    x, y = lin.view(1, 1, size), lin.view(size, 1)
    rows = [
        x * theta[:, i, 0].view(-1, 1, 1) + y * theta[:, i, 1].view(-1, 1, 1) + theta[:, i, 2].view(-1, 1, 1)
        for i in range(2)
    ]
    return torch.stack(rows, dim=-1)


def _render(src: torch.Tensor, renders: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Render each 8x8 source `renders` times with a random affine warp and noise."""
    x = src.repeat_interleave(renders, dim=0).unsqueeze(1)  # [n*r, 1, 8, 8]
    m = x.shape[0]
    angle = (torch.rand(m, generator=gen) * 2 - 1) * math.radians(35)
    scale = 0.7 + torch.rand(m, generator=gen) * 0.6
    shear = (torch.rand(m, generator=gen) * 2 - 1) * 0.3
    tx = (torch.rand(m, generator=gen) * 2 - 1) * 0.25
    ty = (torch.rand(m, generator=gen) * 2 - 1) * 0.25
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(m, 2, 3)
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = (-sin + shear) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = cos / scale
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = _affine_grid(theta, size)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out + 0.6 * torch.randn(out.shape, generator=gen)
    # occluding bar: 60 % of the images get a 4 px stripe of noise across the digit
    occlude = torch.rand(m, generator=gen) < 0.6
    vertical = torch.rand(m, generator=gen) < 0.5
    pos = torch.randint(0, size - 4, (m,), generator=gen)
    rows = torch.arange(size).view(1, size, 1)
    band = (rows >= pos.view(m, 1, 1)) & (rows < pos.view(m, 1, 1) + 4)
    band = torch.where(vertical.view(m, 1, 1), band.transpose(1, 2), band).expand(m, size, size)
    mask = (band & occlude.view(m, 1, 1)).unsqueeze(1)
    out = torch.where(mask, 0.5 * torch.randn(out.shape, generator=gen), out)
    return ((out - 0.2) / 0.5).contiguous()


def default_split_sources(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """Indices into the 1,797 UCI digits of each split's source images (disjoint, seeded)."""
    order = torch.randperm(DIGITS_COUNT, generator=torch.Generator().manual_seed(seed))
    ends = list(itertools.accumulate(DEFAULT_SPLIT_SOURCES.values()))
    return {split: order[end - n : end] for (split, n), end in zip(DEFAULT_SPLIT_SOURCES.items(), ends, strict=True)}


@functools.lru_cache(maxsize=4)
def default_data(seed: int = DEFAULT_SEED, with_train: bool = False) -> DataSplits:
    """The embedded default task: distorted 24 px digits, split by source image.

    Each split is rendered with its own seeded generator, so calibration and test images are
    identical whether or not the (larger) training split is rendered too.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    if images.shape[0] != DIGITS_COUNT:
        raise EmqError(f"scikit-learn's digits have {images.shape[0]} images, expected {DIGITS_COUNT}")
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    sources = default_split_sources(seed)
    for k, (split, idx) in enumerate(sources.items()):
        if split == "train" and not with_train:
            continue
        r = DEFAULT_RENDERS[split]
        gen = torch.Generator().manual_seed(seed * 100 + k)
        parts[split] = (_render(images[idx], r, DEFAULT_SIZE, gen), labels[idx].repeat_interleave(r))
    fingerprint = GENERATED_FINGERPRINTS.get(seed) or tensor_digest(
        [*parts["calib"], *parts["test"]], extra=f"default/{seed}"
    )
    return DataSplits(
        name="default",
        num_classes=10,
        in_channels=1,
        input_size=DEFAULT_SIZE,
        calib_pool=parts["calib"],
        test=TensorDataset(*parts["test"]),
        train=TensorDataset(*parts["train"]) if with_train else None,
        fingerprint=fingerprint,
        calib_sources=sources["calib"].repeat_interleave(DEFAULT_RENDERS["calib"]),
        test_sources=sources["test"].repeat_interleave(DEFAULT_RENDERS["test"]),
    )


def _stack(ds: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[i] for i in indices))
    return torch.stack(list(xs)), torch.tensor(ys, dtype=torch.long)


def _pick(n: int, k: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: min(k, n)].tolist()


def image_folder_data(root: Path, input_size: int = 224, calib_pool_size: int = 1024, seed: int = 0) -> DataSplits:
    """ImageNet layout: `root/train/<class>/*` and `root/val/<class>/*`, or one class folder
    tree split deterministically into calibration and test images."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(int(round(input_size * 256 / 224))),
            transforms.CenterCrop(input_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    try:
        if (root / "train").is_dir() and (root / "val").is_dir():
            train = datasets.ImageFolder(str(root / "train"), transform=tf)
            test: Dataset = datasets.ImageFolder(str(root / "val"), transform=tf)
            calib = _stack(train, _pick(len(train), calib_pool_size, seed))
            num_classes = len(train.classes)
        else:
            full = datasets.ImageFolder(str(root), transform=tf)
            order = _pick(len(full), len(full), seed)
            k = min(calib_pool_size, len(full) // 2)
            calib = _stack(full, order[:k])
            test = Subset(full, order[k:])
            num_classes = len(full.classes)
    except (FileNotFoundError, RuntimeError) as e:
        raise ParameterError("data", root, f"not a readable ImageFolder tree ({e})") from e
    if num_classes < 2:
        raise ParameterError(
            "data",
            root,
            f"has {num_classes} class folder; every prediction would be right (100 % top-1), "
            "so give an ImageFolder tree with at least 2 class folders",
        )
    return DataSplits(
        name=str(root),
        num_classes=num_classes,
        in_channels=3,
        input_size=input_size,
        calib_pool=calib,
        test=test,
        fingerprint=tensor_digest(calib, extra=f"{root}|{len(test)}|{input_size}"),
    )


def cifar10_data(root: Path, calib_pool_size: int = 1024, seed: int = 0) -> DataSplits:
    """CIFAR-10 in torchvision's on-disk format (`cifar-10-batches-py`), never downloaded."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    try:
        train = datasets.CIFAR10(str(root), train=True, download=False, transform=tf)
        test = datasets.CIFAR10(str(root), train=False, download=False, transform=tf)
    except RuntimeError as e:
        raise ParameterError("data", root, f"no CIFAR-10 data in torchvision's format there ({e})") from e
    calib = _stack(train, _pick(len(train), calib_pool_size, seed))
    return DataSplits(
        name=str(root),
        num_classes=10,
        in_channels=3,
        input_size=32,
        calib_pool=calib,
        test=test,
        train=train,
        fingerprint=tensor_digest(calib, extra=f"cifar10|{root}"),
    )


def load_data(spec: str, input_size: int = 224) -> DataSplits:
    """Resolve `--data`: `default`, `fashion-mnist` / `mnist` (emq.mnist_data), `shapes-rgb`
    (emq.shapes_data), a CIFAR-10 directory, or an ImageFolder directory."""
    if spec == "default":
        return default_data()
    if is_mnist_spec(spec):
        return load_mnist(spec)
    if spec == "shapes-rgb":
        from .shapes_data import shapes_data

        return shapes_data()
    root = Path(spec)
    if not root.is_dir():
        raise ParameterError(
            "data",
            spec,
            "no such directory (use 'default', 'fashion-mnist', 'mnist', 'shapes-rgb', an ImageFolder tree, "
            "a CIFAR-10 directory or a directory of MNIST-format idx files)",
        )
    if (root / "cifar-10-batches-py").is_dir() or root.name == "cifar-10-batches-py":
        return cifar10_data(root.parent if root.name == "cifar-10-batches-py" else root)
    return image_folder_data(root, input_size=input_size)
