"""Atomic campaign checkpoints: JSON state + numpy arrays in one .npz, no pickle.

Holds everything a resumed campaign needs to continue to exactly the result of an
uninterrupted run: population, hall of fame, fitness cache (with signatures), counters and
the states of Python's, numpy's and torch's random generators.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EmqError
from ..fileio import atomic_write

FORMAT = "emq-checkpoint/1"


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save(path: Path, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a killed process leaves the previous checkpoint intact."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez must not append ".npz" to the temp name
            np.savez(f, state=np.array(json.dumps({"format": FORMAT, **state})), **arrays)

    atomic_write(path, write)


def load(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            state = json.loads(str(z["state"]))
            arrays = {k: z[k] for k in z.files if k != "state"}
    except (OSError, ValueError, KeyError) as e:
        raise EmqError(f"checkpoint {path}: unreadable ({e}); delete it or start without --resume") from e
    if state.get("format") != FORMAT:
        raise EmqError(f"checkpoint {path}: format {state.get('format')!r}, expected {FORMAT!r}")
    return state, arrays
