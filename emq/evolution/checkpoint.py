"""Atomic campaign checkpoints: JSON state + numpy arrays in one .npz, no pickle.

Holds everything a resumed campaign needs to continue to exactly the result of an
uninterrupted run: population, hall of fame, fitness cache (with signatures), counters and
the campaign's random generator state.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmqError
from ..fileio import atomic_write

FORMAT = "emq-checkpoint/1"


def rng_to_json(state: tuple) -> list:
    """A `random.Random` state as JSON (the campaign's own generator; no global state)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_from_json(obj: list) -> tuple:
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)


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
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # a truncated file is not a zip archive
        raise EmqError(f"checkpoint {path}: unreadable ({e}); delete it or start a new campaign") from e
    if state.get("format") != FORMAT:
        raise EmqError(f"checkpoint {path}: format {state.get('format')!r}, expected {FORMAT!r}")
    return state, arrays


def hall_of_fame(path: str | Path) -> list[list[list[Any]]]:
    """A campaign checkpoint's hall of fame, best first, as token lists: what `seed_trees`
    (SearchConfig, ProxySearch) takes to warm-start another campaign from it."""
    state, _ = load(Path(path))
    tokens = {row[0]: row[1] for row in state["cache"]}
    return [[list(t) for t in tokens[key]] for key in state["hof"]]
