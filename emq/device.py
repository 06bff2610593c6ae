"""Where networks run: one resolver for `--device` / `device=`, so every engine refuses the
same bad values with the same message.

The device is a runtime choice, never part of what a result *is*: bench identities and the
statistics and rounding caches are keyed without it, and every random draw that defines a
result (calibration images, Hessian probes, AdaRound batches) comes from a CPU generator, so
a GPU run evaluates the same configurations on the same images with the same probes.
"""

from __future__ import annotations

import torch

from .specs import ParameterError

ACCEPTED = "cpu, cuda or cuda:N"
_TYPES = ("cpu", "cuda", "meta")  # meta: shapes only, no data (used by tests to catch tensors left on the CPU)


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """`device` as a torch.device that exists here (None means cpu).

    Refused with a ParameterError naming `device`: an unknown form, CUDA when no CUDA device
    is visible, and cuda:N beyond the visible devices.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip().lower())
    except (RuntimeError, TypeError, ValueError) as e:
        raise ParameterError("device", device, f"not a device; use {ACCEPTED}") from e
    if dev.type not in _TYPES or (dev.type != "cuda" and dev.index not in (None, 0)):
        raise ParameterError("device", device, f"not a device emq runs on; use {ACCEPTED}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(
                "device", device, "no CUDA device is visible here (torch.cuda.is_available() is False); use cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ParameterError(
                "device", device, f"only {count} CUDA device(s) are visible here (cuda:0..cuda:{count - 1})"
            )
    return torch.device(dev.type) if dev.type != "cuda" else dev
