"""Stable content hashes, used to key caches and to record provenance in benches."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


def tensor_digest(tensors: Iterable[torch.Tensor], extra: str = "") -> str:
    """SHA-256 over the raw bytes of tensors, in order; identical data gives the same key."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(extra.encode())
    return h.hexdigest()[:16]


def state_dict_digest(module: torch.nn.Module) -> str:
    """Hash of a module's parameters and buffers (names included)."""
    sd = module.state_dict()
    names = sorted(sd)
    return tensor_digest((sd[n] for n in names), extra="|".join(names))
