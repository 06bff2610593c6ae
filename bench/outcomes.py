"""Per-image outcomes of one evaluated configuration, stored compactly in the bench file.

With every record's per-test-image outcome (correct or not, CE loss, KL to full precision)
in the file, any resampling of test images (fit / report pools, split halves, bootstrap over
test sources) is a query instead of a re-run. One record's blob: a version byte, the image
count, then the packed correct bits and float16 loss and KL, each array as its high-byte plane
then its low-byte plane (exponents together), raw-LZMA2-compressed (about 3.6 bytes an image;
format 1, zlib of the arrays as they are, is still read).
float16 keeps three significant digits per image; means over pools of hundreds of images are
accurate to far better than the differences between configurations. A calibration retest keeps
only its report-pool images (`restrict`): the retest reliability is measured on the report pool and
nothing reads the rest, which is stored as NaN and compresses to almost nothing.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emq.errors import EmqError

FORMAT = 2  # 1: zlib of the float16 arrays (older files, still read)
_LZMA = [{"id": lzma.FILTER_LZMA2, "preset": 6}]
_HEADER = struct.Struct("<BI")
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class Outcomes:
    """One configuration's per-image outcomes, in test order."""

    correct: np.ndarray  # bool [n]
    loss: np.ndarray  # float64 [n]
    kl: np.ndarray  # float64 [n]

    def __len__(self) -> int:
        return int(self.correct.shape[0])

    def metric(self, name: str) -> np.ndarray:
        """Per-image values of a bench metric: top1 as 0/100, loss and KL as they are."""
        if name == "top1":
            return 100.0 * self.correct
        return getattr(self, name)


def encode(per_image: Mapping[str, np.ndarray]) -> bytes:
    """The blob of per-image arrays {'correct', 'loss', 'kl'} (as `PTQEngine.evaluate` gives)."""
    correct = np.asarray(per_image["correct"], dtype=bool)
    n = correct.shape[0]
    parts = [np.packbits(correct).tobytes()]
    for key in ("loss", "kl"):
        v = np.asarray(per_image[key], dtype=np.float64)
        if v.shape != (n,):
            raise EmqError(f"per-image {key}: {v.shape[0] if v.ndim else 0} values for {n} images")
        half = np.where(np.isnan(v), v, np.clip(v, 0.0, _F16_MAX)).astype("<f2")  # NaN stays NaN: never a number
        planes = half.view(np.uint8).reshape(n, 2)
        parts += [planes[:, 1].tobytes(), planes[:, 0].tobytes()]  # high bytes (sign, exponent) together
    return _HEADER.pack(FORMAT, n) + lzma.compress(b"".join(parts), format=lzma.FORMAT_RAW, filters=_LZMA)


def restrict(blob: bytes, keep: np.ndarray, where: str = "record") -> bytes:
    """The blob with only the images in boolean `keep`: the others' loss and KL become NaN (so a
    reader of them gets NaN, never a number) and they count as not correct."""
    out = decode(blob, where)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(out),):
        raise EmqError(f"{where}: a mask of {keep.shape[0] if keep.ndim else 0} images for {len(out)} outcomes")
    return encode(
        {"correct": out.correct & keep, "loss": np.where(keep, out.loss, np.nan), "kl": np.where(keep, out.kl, np.nan)}
    )


def _raw_size(n: int) -> int:
    """Bytes of the uncompressed arrays of `n` images: packed correct bits, float16 loss and KL."""
    return (n + 7) // 8 + 4 * n


def max_blob_size(n: int) -> int:
    """The largest blob `encode` can make for `n` images (zlib's worst case, compressBound, or
    LZMA2's, a 3-byte header per stored 64 KiB chunk, plus the header): a longer one is damaged or
    hostile, refused before it is read."""
    raw = _raw_size(n)
    return _HEADER.size + raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 64


def _decompressor(version: int) -> Any:
    """The streaming decompressor of an outcome format (both kinds take `decompress(data, max_length)`
    and tell `eof`), or None for a format this emq does not read."""
    if version == 1:
        return zlib.decompressobj()
    if version == FORMAT:
        return lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA)
    return None


def decode(blob: bytes, where: str = "record") -> Outcomes:
    """Outcomes of one blob (format 2, or format 1 of older files); a damaged blob is an error
    naming `where`, never silent zeros. Decompression stops one byte past the size the header
    announces, so a compression bomb costs no more memory than an honest blob."""
    try:
        version, n = _HEADER.unpack_from(blob)
        unpack = _decompressor(version)
        raw = unpack.decompress(blob[_HEADER.size :], _raw_size(n) + 1) if unpack is not None else b""
    except (struct.error, zlib.error, lzma.LZMAError, TypeError) as e:
        raise EmqError(f"{where}: per-image outcomes are damaged ({e}); rebuild the bench") from e
    nbits = (n + 7) // 8
    if unpack is not None and not unpack.eof and len(raw) <= _raw_size(n):
        raise EmqError(f"{where}: per-image outcomes are damaged (the compressed data ends early); rebuild the bench")
    if unpack is None or len(raw) != nbits + 4 * n or not unpack.eof:
        raise EmqError(
            f"{where}: per-image outcomes have format {version} and {len(raw)} bytes for {n} images; rebuild the bench"
        )
    correct = np.unpackbits(np.frombuffer(raw, np.uint8, nbits), count=n).astype(bool)
    if version == 1:  # float16 arrays as they are
        loss = np.frombuffer(raw, "<f2", n, nbits).astype(np.float64)
        kl = np.frombuffer(raw, "<f2", n, nbits + 2 * n).astype(np.float64)
        return Outcomes(correct, loss, kl)
    planes = np.frombuffer(raw, np.uint8, 4 * n, nbits).reshape(2, 2, n)  # [loss/kl, high/low, image]
    halves = np.stack([planes[:, 1], planes[:, 0]], axis=-1).copy().view("<f2")[..., 0]  # little-endian pairs
    return Outcomes(correct, halves[0].astype(np.float64), halves[1].astype(np.float64))
