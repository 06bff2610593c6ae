"""`--data shapes-rgb`: a procedurally generated 3-channel task at 32 px, the zoo's third task.

Ten classes: five shapes (disk, square, triangle, ring, cross) in two colour families (warm:
red to yellow; cool: cyan to blue), so a network must read both form and colour through an RGB
stem. Every image draws its own position, size, rotation, stretch, hue, saturation and
brightness, lies on a smooth random colour field, carries a smaller distractor shape of any form
and colour, and gets pixel noise: hard enough (61-94 % top-1 for the zoo's networks after 1,500
steps) that 2-4-bit weights change the outputs measurably, where MNIST's 99 % networks barely move
and a bench over them cannot rank configurations reliably (docs/zoo.md).

Each split comes from its own seeded generator (train 20,000, calibration 1,024, test 4,000
images), so splits are disjoint with probability one and identical on every machine; each image
is its own source. Nothing is downloaded or installed: the calibration and test images are computed
in about 3 seconds on 2 cores (the training split in 5 more).
"""

from __future__ import annotations

import functools
import math

import torch
from torch.utils.data import TensorDataset

from .datasplits import DataSplits

NAME = "shapes-rgb"
SIZE = 32
SHAPES = ("disk", "square", "triangle", "ring", "cross")
SPLIT_IMAGES = {"train": 20000, "calib": 1024, "test": 4000}
SEED = 4242
# hue ranges (fractions of the colour circle) of the two colour families
WARM = (-0.05, 0.15)
COOL = (0.45, 0.68)
NOISE = 0.12
# the task's fingerprint: the digest of the reference rendering the shipped benches were built on
# (emq.datasplits.DataSplits.fingerprint says why it is fixed; tests/test_generated_data.py checks a rendering)
GENERATED_FINGERPRINT = "c9953300cc00a602"


def _distance(shape: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A distance per pixel in units of the shape's radius: the shape is where it is below 1."""
    r = torch.sqrt(u * u + v * v)
    angles = torch.tensor([math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3])
    tri = torch.stack([u * torch.cos(a) + v * torch.sin(a) for a in angles]).amax(0) / 0.55
    au, av = u.abs(), v.abs()
    cross = torch.minimum(torch.maximum(au / 0.32, av), torch.maximum(au, av / 0.32))
    forms = torch.stack([r, torch.maximum(au, av) / 0.85, tri, (r - 0.72).abs() / 0.28, cross])
    return forms.gather(0, shape.view(1, -1, 1, 1).expand(1, *u.shape)).squeeze(0)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[n] hue, saturation, value in [0, 1] -> [n, 3] RGB."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _draw(shape: torch.Tensor, radius: tuple[float, float], grid: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Soft masks [n, 1, S, S] of `shape` at a random position, size, rotation and stretch."""
    n = shape.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    cx, cy = uniform(-0.4, 0.4), uniform(-0.4, 0.4)
    rad, angle, stretch = uniform(*radius), uniform(0, 2 * math.pi), uniform(0.75, 1.3)
    x = grid[0][None] - cx.view(n, 1, 1)
    y = grid[1][None] - cy.view(n, 1, 1)
    cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    u = (cos * x + sin * y) / (rad * stretch).view(n, 1, 1)
    v = (-sin * x + cos * y) * stretch.view(n, 1, 1) / rad.view(n, 1, 1)
    pixel = (2.0 / SIZE) / rad.view(n, 1, 1)  # one pixel in units of the radius: anti-aliased edges
    mask = torch.sigmoid((1 - _distance(shape, u, v)) / (0.5 * pixel))
    return mask.unsqueeze(1)


def _render(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images [n, 3, 32, 32] (normalised) and their labels, class-balanced in a seeded order."""
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=gen)]
    shape, cool = labels % 5, labels // 5
    lin = (torch.arange(SIZE, dtype=torch.float32) + 0.5) / SIZE * 2 - 1
    grid = torch.stack(torch.meshgrid(lin, lin, indexing="xy"))  # [2, S, S]: x, y in [-1, 1]
    background = torch.rand(n, 3, 4, 4, generator=gen) * 0.5 + 0.25
    background = torch.nn.functional.interpolate(background, size=SIZE, mode="bicubic", align_corners=False)
    lo = torch.where(cool.bool(), COOL[0], WARM[0])
    hi = torch.where(cool.bool(), COOL[1], WARM[1])
    hue = (lo + (hi - lo) * torch.rand(n, generator=gen)) % 1.0
    color = _hsv_to_rgb(hue, 0.55 + 0.45 * torch.rand(n, generator=gen), 0.55 + 0.45 * torch.rand(n, generator=gen))
    mask = _draw(shape, (0.35, 0.6), grid, gen)
    image = background * (1 - mask) + color.view(n, 3, 1, 1) * mask
    other = torch.randint(0, 5, (n,), generator=gen)
    other_color = _hsv_to_rgb(torch.rand(n, generator=gen), torch.rand(n, generator=gen), torch.rand(n, generator=gen))
    small = _draw(other, (0.12, 0.22), grid, gen)
    image = image * (1 - small) + other_color.view(n, 3, 1, 1) * small
    image = image + NOISE * torch.randn(image.shape, generator=gen)
    return ((image - 0.5) / 0.25).contiguous(), labels


@functools.lru_cache(maxsize=2)
def shapes_data(with_train: bool = False) -> DataSplits:
    """The three splits of the procedural shapes task (training only when asked: it is the large one)."""
    parts = {
        split: _render(n, torch.Generator().manual_seed(SEED + k))
        for k, (split, n) in enumerate(SPLIT_IMAGES.items())
        if with_train or split != "train"
    }
    return DataSplits(
        name=NAME,
        num_classes=10,
        in_channels=3,
        input_size=SIZE,
        calib_pool=parts["calib"],
        test=TensorDataset(*parts["test"]),
        train=TensorDataset(*parts["train"]) if with_train else None,
        fingerprint=GENERATED_FINGERPRINT,
    )
