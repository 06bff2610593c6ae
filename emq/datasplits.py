"""What every data source yields: calibration images in memory and a test set (`DataSplits`).

Its own module so that the loaders (emq.data, emq.mnist_data) depend on it and not on each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .specs import ParameterError

TEST_LIMIT_MARK = "|test[:"  # a fingerprint's suffix when only the first N test images are used: "|test[:N]"
DEFAULT_SEED = 2023  # the embedded default data's seed, and the fixed split of calibration sources into halves
DEFAULT_CALIB_SIZE = 512


def base_fingerprint(fingerprint: str) -> str:
    """The data's fingerprint without a test-image limit: the calibration images, and all that is computed
    from them (statistics, sensitivities), are the same whatever number of test images a bench used."""
    return fingerprint.split(TEST_LIMIT_MARK)[0]


@dataclass(kw_only=True)
class DataSplits:
    """Calibration images in memory (they are small and reused often) and a test set."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    calib_pool: tuple[torch.Tensor, torch.Tensor]
    test: Dataset
    train: Dataset | None = None
    # identifies the data in a bench's provenance. A task generated inside emq is identified by its
    # recipe, named by the digest of its reference rendering (GENERATED_FINGERPRINTS): its images are
    # computed with float maths whose last bits depend on the CPU (vector width of sin/exp, BLAS
    # kernels), so a digest of this machine's rendering would tell the recipe apart from itself.
    fingerprint: str = ""
    # source id of every calibration / test image (renders of one digit share a source);
    # None: every image is its own source
    calib_sources: torch.Tensor | None = None
    test_sources: torch.Tensor | None = None

    def calibration(
        self, size: int = DEFAULT_CALIB_SIZE, seed: int = 0, half: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded draw of `size` calibration images: a different seed is another draw.

        `half` 0 or 1 draws only from that half of the calibration *sources* (a fixed split),
        so two draws from different halves share no image and no source: what a calibration
        test-retest needs to be an independent repeat.
        """
        x, y = self.calib_pool
        if half is not None:
            keep = calibration_half_mask(self.calib_sources, x.shape[0], half)
            x, y = x[keep], y[keep]
        n = x.shape[0]
        if size >= n:
            return x, y
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:size].sort().values
        return x[idx], y[idx]

    def test_batches(self, batch_size: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Test batches in a fixed order (so cached full-precision outputs line up)."""
        if isinstance(self.test, TensorDataset):
            x, y = self.test.tensors
            for i in range(0, x.shape[0], batch_size):
                yield x[i : i + batch_size], y[i : i + batch_size]
            return
        yield from DataLoader(self.test, batch_size=batch_size, shuffle=False, num_workers=0)


def calibration_half_mask(sources: torch.Tensor | None, n: int, half: int) -> torch.Tensor:
    """Images of one half (0 or 1) of the calibration sources, split by a fixed seeded permutation."""
    if half not in (0, 1):
        raise ParameterError("calib_half", half, "use 0 or 1 (or None for the whole calibration pool)")
    src = sources if sources is not None else torch.arange(n)
    uniq = torch.unique(src)
    order = uniq[torch.randperm(len(uniq), generator=torch.Generator().manual_seed(DEFAULT_SEED))]
    chosen = order[: (len(uniq) + 1) // 2] if half == 0 else order[(len(uniq) + 1) // 2 :]
    return torch.isin(src, chosen)
