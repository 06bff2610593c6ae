"""MNIST-format image data (Fashion-MNIST, MNIST) read from idx files on disk, never downloaded.

The idx format (LeCun's): a 4-byte magic (0, 0, type code, number of dimensions), the
dimensions as big-endian int32, then the values; files may be gzipped. Two layouts are
found: torchvision's (`<root>/FashionMNIST/raw/train-images-idx3-ubyte[.gz]`) and Debian's
`dataset-fashion-mnist` package (`/usr/share/datasets/fashion-mnist/*.gz`).

Splits: the model trains on the first 55,000 training images; the calibration pool is
drawn from the last 5,000 (never trained on); the test split is the 10,000 test images,
each its own source.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .datasplits import DataSplits
from .hashing import tensor_digest
from .specs import ParameterError

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TRAIN_IMAGES = 55_000  # the rest of the training set is the calibration pool
CALIB_POOL = 1024


@dataclass(frozen=True, kw_only=True)
class MnistFormat:
    """One MNIST-format data set: where it is usually found and how to get it."""

    name: str
    torchvision_dir: str  # torchvision's folder name under its root
    debian_dir: str | None  # where the Debian package puts the files
    debian_package: str | None
    mean: float
    std: float
    classes: int = 10  # labels are 0..classes-1


FORMATS = {
    "fashion-mnist": MnistFormat(
        name="fashion-mnist",
        torchvision_dir="FashionMNIST",
        debian_dir="/usr/share/datasets/fashion-mnist",
        debian_package="dataset-fashion-mnist",
        mean=0.2860,
        std=0.3530,
    ),
    "mnist": MnistFormat(
        name="mnist", torchvision_dir="MNIST", debian_dir=None, debian_package=None, mean=0.1307, std=0.3081
    ),
}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in one idx file (gzipped or not), checked against its header."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ParameterError("data", path, f"cannot read this idx file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise ParameterError(
            "data",
            path,
            "not an idx file (bad magic number); expected MNIST-format files such as train-images-idx3-ubyte",
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ParameterError("data", path, "truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    want = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != want:
        raise ParameterError(
            "data",
            path,
            f"holds {len(raw) - header} data bytes but its header {dims} needs {want}; "
            "the file is truncated or corrupt",
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _file_in(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def idx_files(directory: Path, fmt: MnistFormat | None = None) -> dict[str, Path] | None:
    """The four idx files in `directory` or its torchvision sub-layout, else None."""
    candidates = [directory]
    names = [fmt.torchvision_dir] if fmt else [f.torchvision_dir for f in FORMATS.values()]
    candidates += [directory / n / "raw" for n in names] + [directory / "raw"]
    for d in candidates:
        found = {k: _file_in(d, stem) for k, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def search_dirs(fmt: MnistFormat) -> list[Path]:
    """Where `--data fashion-mnist` looks, in order."""
    dirs = []
    if os.environ.get("EMQ_DATA_DIR"):
        dirs.append(Path(os.environ["EMQ_DATA_DIR"]))
    if fmt.debian_dir:
        dirs.append(Path(fmt.debian_dir))
    dirs += [Path.home() / ".cache" / "emq" / "data", Path("data"), Path.home() / "data"]
    return dirs


def find(fmt_name: str) -> dict[str, Path]:
    """The idx files of a known data set in the usual places, or an error saying how to get them."""
    fmt = FORMATS[fmt_name]
    dirs = search_dirs(fmt)
    for d in dirs:
        found = idx_files(d, fmt)
        if found:
            return found
    get = (
        f"install Debian's package (`apt-get install {fmt.debian_package}`, files in {fmt.debian_dir}), or "
        if fmt.debian_package
        else ""
    )
    raise ParameterError(
        "data",
        fmt_name,
        f"not found in {', '.join(map(str, dirs))}; {get}pass --data DIR where DIR "
        f"holds {FILES['train_images']}[.gz] and the other three idx files "
        f"(torchvision's {fmt.torchvision_dir}/raw layout works), or set EMQ_DATA_DIR; nothing is downloaded",
    )


def _images(arr: np.ndarray, path: Path, fmt: MnistFormat) -> torch.Tensor:
    if arr.ndim != 3:
        raise ParameterError("data", path, f"holds an array of shape {arr.shape}; images must be [N, H, W]")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ParameterError("data", path, f"holds no images (shape {arr.shape}); give the complete {fmt.name} files")
    x = torch.from_numpy(arr.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - fmt.mean) / fmt.std


def _labels(arr: np.ndarray, path: Path, n: int, fmt: MnistFormat) -> torch.Tensor:
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ParameterError("data", path, f"holds {arr.shape} labels for {n} images")
    bad = np.flatnonzero((arr < 0) | (arr >= fmt.classes))
    if bad.size:
        raise ParameterError(
            "data",
            path,
            f"label {arr[bad[0]]} at position {bad[0]} ({bad.size} such) is outside {fmt.name}'s classes "
            f"0..{fmt.classes - 1}; give the data set's own label files",
        )
    return torch.from_numpy(arr.astype(np.int64))


def mnist_data(files: dict[str, Path], fmt_name: str = "fashion-mnist", with_train: bool = False) -> DataSplits:
    """DataSplits from the four idx files: calibration from the training images after the first
    55,000 (never trained on), the test images as the test split."""
    fmt = FORMATS[fmt_name]
    tx = _images(read_idx(files["train_images"]), files["train_images"], fmt)
    ty = _labels(read_idx(files["train_labels"]), files["train_labels"], tx.shape[0], fmt)
    vx = _images(read_idx(files["test_images"]), files["test_images"], fmt)
    vy = _labels(read_idx(files["test_labels"]), files["test_labels"], vx.shape[0], fmt)
    if tx.shape[2:] != vx.shape[2:]:
        raise ParameterError(
            "data",
            files["test_images"],
            f"test images are {tuple(vx.shape[2:])} px but training images are {tuple(tx.shape[2:])}",
        )
    num_classes = int(max(ty.max(), vy.max())) + 1
    if num_classes < 2:
        raise ParameterError("data", files["train_labels"], "has a single class; a classifier needs at least 2")
    split = TRAIN_IMAGES if tx.shape[0] > TRAIN_IMAGES else tx.shape[0] // 2  # tiny files (tests): half and half
    held = torch.arange(split, tx.shape[0])
    pick = held[torch.randperm(held.numel(), generator=torch.Generator().manual_seed(0))[:CALIB_POOL]].sort().values
    calib = (tx[pick].contiguous(), ty[pick].contiguous())
    return DataSplits(
        name=fmt_name,
        num_classes=num_classes,
        in_channels=1,
        input_size=int(tx.shape[-1]),
        calib_pool=calib,
        test=TensorDataset(vx, vy),
        train=TensorDataset(tx[:split], ty[:split]) if with_train else None,
        fingerprint=tensor_digest([*calib, vx, vy], extra=fmt_name),
    )


def is_mnist_spec(spec: str) -> bool:
    """Whether `--data spec` names MNIST-format data: a known name, NAME:DIR, or a directory of idx files."""
    name, sep, _ = spec.partition(":")
    return (
        spec in FORMATS
        or (bool(sep) and name in FORMATS)
        or (Path(spec).is_dir() and idx_files(Path(spec)) is not None)
    )


def load_mnist(spec: str, with_train: bool = False) -> DataSplits:
    """`fashion-mnist` / `mnist` (found in the usual places), `fashion-mnist:DIR`, or a DIR of idx
    files (Fashion-MNIST when its path says "fashion", else MNIST: they normalise differently)."""
    if spec in FORMATS:
        return mnist_data(find(spec), spec, with_train)
    name, sep, rest = spec.partition(":")
    if sep and name in FORMATS:
        fmt, root = name, Path(rest)
    else:
        root = Path(spec)
        fmt = "fashion-mnist" if "fashion" in str(root.resolve()).lower() else "mnist"
    files = idx_files(root, FORMATS[fmt]) or idx_files(root)
    if files is None:
        raise ParameterError(
            "data",
            spec,
            f"no MNIST-format idx files ({FILES['train_images']}[.gz] and three more) in {root} or "
            f"its {FORMATS[fmt].torchvision_dir}/raw",
        )
    return mnist_data(files, fmt, with_train)
