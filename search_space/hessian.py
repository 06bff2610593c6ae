"""Per-layer Hessian information of the task loss: Hutchinson diagonal and trace, top eigenvalue.

Done the careful way:

- the caller puts the model in eval mode (BatchNorm uses running statistics, so the loss is
  a fixed function of the weights and the Hessian is well defined);
- Hessian-vector products are exact double-backward products; over several batches they
  are accumulated weighted by batch size, so the result is the Hessian of the mean loss
  over all Hessian images, whatever the batch size (a smaller batch only saves memory);
- with one batch, the gradient graph is built once and reused by every product;
- Hutchinson probes are Rademacher vectors from a seeded generator (same seed, same result);
  every probe gives each layer's trace vᵀ_l (Hv)_l and the diagonal estimate v ⊙ Hv at once;
- the probe loop stops when the per-layer traces stop moving: the L1 change of the running
  means divided by the L1 norm of the previous means (absolute values, so a negative
  estimate never ends it early), with explicit minimum and maximum probe counts; the result
  reports, per layer, the final relative change of its running mean (the evidence of
  convergence a caller can show);
- activations whose backward PyTorch cannot differentiate again (hard-sigmoid, hard-swish:
  MobileNetV3's squeeze-excitation) are swapped, for the Hessian only, for the same
  piecewise-linear functions written with clamp (`twice_differentiable`);
- the top eigenvalue of each layer's own Hessian block H_ll (HAWQ-V1) comes from power
  iteration with per-layer stopping on the relative change of the Rayleigh quotient, as in
  HAWQ's code (defaults: at most 100 iterations, tolerance 1e-3); it is the eigenvalue of
  largest magnitude, with sign, and each layer's iterations and final change are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_TINY = 1e-30


class HessianProblem:
    """The mean task loss over some batches, as a function of some parameters."""

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[torch.Tensor],
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        loss_fn: LossFn = F.cross_entropy,
    ) -> None:
        if not batches:
            raise ValueError("HessianProblem needs at least one batch")
        self.model = model
        self.params = list(params)
        self.batches = list(batches)
        self.loss_fn = loss_fn
        self.total = sum(int(x.shape[0]) for x, _ in self.batches)
        self._graph = self._gradient(*self.batches[0]) if len(self.batches) == 1 else None

    def _gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Gradient of this batch's share of the mean loss, kept differentiable."""
        loss = self.loss_fn(self.model(x), y) * (x.shape[0] / self.total)
        return torch.autograd.grad(loss, self.params, create_graph=True)

    def _graphs(self):
        if self._graph is not None:
            yield self._graph
        else:
            for x, y in self.batches:
                yield self._gradient(x, y)

    def hvp(self, v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """H v for the full parameter list (cross-layer terms included)."""
        out = [torch.zeros_like(p) for p in self.params]
        for g in self._graphs():
            hv = torch.autograd.grad(g, self.params, grad_outputs=list(v), retain_graph=self._graph is not None)
            for acc, h in zip(out, hv, strict=True):
                acc.add_(h.detach())
        return out

    def block_hvps(self, vs: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """H_ll v_l for each layer l in `vs`: every layer's own Hessian block, no cross terms."""
        out = {i: torch.zeros_like(v) for i, v in vs.items()}
        for g in self._graphs():
            for i, v in vs.items():
                (h,) = torch.autograd.grad(g[i], self.params[i], grad_outputs=v, retain_graph=True)
                out[i].add_(h.detach())
        return out


class _ClampHardsigmoid(nn.Module):
    """hardsigmoid(x) = clamp(x + 3, 0, 6) / 6, with a backward that has a derivative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


class _ClampHardswish(nn.Module):
    """hardswish(x) = x * clamp(x + 3, 0, 6) / 6, with a backward that has a derivative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


_TWINS: dict[type[nn.Module], type[nn.Module]] = {nn.Hardsigmoid: _ClampHardsigmoid, nn.Hardswish: _ClampHardswish}


@contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with its hard-sigmoid / hard-swish modules swapped for clamp twins while inside
    (double backward through PyTorch's own raises "derivative for hardsigmoid_backward is not
    implemented"); the originals are put back on exit."""
    swapped = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            twin = _TWINS.get(type(child))
            if twin is not None:
                swapped.append((parent, name, child))
                setattr(parent, name, twin())
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


@dataclass(kw_only=True)
class HutchinsonResult:
    diag: list[torch.Tensor]  # per parameter, the estimate of diag(H)
    trace: np.ndarray  # [L] per-parameter trace estimates (float64)
    history: np.ndarray  # [probes, L] running-mean traces after each probe
    probes: int
    converged: bool
    change: float  # the stopping statistic after the last probe (inf after a single probe)
    layer_change: np.ndarray  # [L] final |change| of each layer's running mean / |previous mean|
    layer_rel_stderr: (
        np.ndarray
    )  # [L] standard error of each layer's trace over the probes / |trace| (inf with one probe)


@dataclass
class PowerIterationResult:
    eig: np.ndarray  # [L] dominant eigenvalue of each layer's Hessian block (float64)
    iterations: np.ndarray  # [L] iterations each layer used
    change: np.ndarray  # [L] final |change| of the Rayleigh quotient / |previous value| (inf after one)
    converged: np.ndarray  # [L] bool: stopped below the tolerance (or on an exactly zero H_ll v)


def rademacher(shape: torch.Size, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """±1 entries with equal probability, drawn on CPU from `gen` so results do not depend on device."""
    return (torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.int8) * 2 - 1).to(
        device=device, dtype=torch.float32
    )


def _relative_change(cur: np.ndarray, prev: np.ndarray) -> np.ndarray:
    return np.abs(cur - prev) / np.maximum(np.abs(prev), _TINY)


def hutchinson(
    problem: HessianProblem,
    *,
    min_probes: int = 8,
    max_probes: int = 128,
    tol: float = 1e-2,
    seed: int = 0,
    progress: bool = False,
) -> HutchinsonResult:
    """Per-layer traces and the diagonal of H from the same seeded Rademacher probes."""
    if not 1 <= min_probes <= max_probes:
        raise ValueError(f"need 1 <= min_probes ({min_probes}) <= max_probes ({max_probes})")
    gen = torch.Generator().manual_seed(seed)
    diag_sum = [torch.zeros_like(p) for p in problem.params]
    trace_sum = np.zeros(len(problem.params))
    history: list[np.ndarray] = []
    converged = False
    change = float("inf")
    bar = tqdm(total=max_probes, desc="Hessian trace", unit="probe", leave=False, disable=not progress)
    for k in range(1, max_probes + 1):
        bar.update()
        v = [rademacher(p.shape, gen, p.device) for p in problem.params]
        hv = problem.hvp(v)
        for i, (vi, hi) in enumerate(zip(v, hv, strict=True)):
            vhv = vi * hi
            diag_sum[i].add_(vhv)
            trace_sum[i] += float(vhv.sum(dtype=torch.float64))
        history.append(trace_sum / k)
        if k > 1:
            prev, cur = history[-2], history[-1]
            change = float(np.abs(cur - prev).sum() / max(np.abs(prev).sum(), _TINY))
            bar.set_postfix(change=f"{change:.2g}")
            if k >= min_probes and change < tol:
                converged = True
                break
    bar.close()
    probes = len(history)
    hist = np.array(history)
    if probes > 1:
        layer_change = _relative_change(hist[-1], hist[-2])
        counts = np.arange(1, probes + 1)[:, None]
        per_probe = np.diff(hist * counts, axis=0, prepend=0.0)  # each probe's own v^T H v per layer
        rel_stderr = per_probe.std(axis=0, ddof=1) / np.sqrt(probes) / np.maximum(np.abs(hist[-1]), _TINY)
    else:
        layer_change = rel_stderr = np.full(len(problem.params), np.inf)
    log.info("Hutchinson: %d probes, converged=%s, change %.3g", probes, converged, change)
    return HutchinsonResult(
        diag=[d / probes for d in diag_sum],
        trace=hist[-1].copy(),
        history=hist,
        probes=probes,
        converged=converged,
        change=change,
        layer_change=layer_change,
        layer_rel_stderr=rel_stderr,
    )


def power_iteration(
    problem: HessianProblem, *, iters: int = 100, tol: float = 1e-3, seed: int = 0, progress: bool = False
) -> PowerIterationResult:
    """Dominant eigenvalue of every layer's Hessian block H_ll, with per-layer convergence.

    A layer stops when its Rayleigh quotient changes by less than `tol` relative to its
    previous magnitude (HAWQ's criterion and defaults); the still-moving layers share each
    pass over the batches.
    """
    if iters < 1:
        raise ValueError(f"power iteration needs iters >= 1, got {iters}")
    gen = torch.Generator().manual_seed(seed)
    vs: dict[int, torch.Tensor] = {}
    for i, p in enumerate(problem.params):
        v = torch.randn(tuple(p.shape), generator=gen).to(device=p.device, dtype=torch.float32)
        vs[i] = v / v.norm().clamp_min(_TINY)
    n = len(problem.params)
    eig = np.zeros(n)
    used = np.zeros(n, dtype=np.int64)
    change = np.full(n, np.inf)
    converged = np.zeros(n, dtype=bool)
    active = dict(vs)
    bar = tqdm(total=iters, desc="Hessian eigenvalues", unit="iter", leave=False, disable=not progress)
    for it in range(1, iters + 1):
        bar.update()
        hv = problem.block_hvps(active)
        nxt: dict[int, torch.Tensor] = {}
        for i, h in hv.items():
            lam = float((active[i] * h).sum(dtype=torch.float64))
            used[i] = it
            if it > 1:
                change[i] = abs(lam - eig[i]) / max(abs(eig[i]), _TINY)
            eig[i] = lam
            norm = h.norm()
            if change[i] < tol or float(norm) == 0.0:
                converged[i] = True
                continue
            nxt[i] = h / norm
        active = nxt
        bar.set_postfix(moving=len(active))
        if not active:
            break
    bar.close()
    return PowerIterationResult(eig, used, change, converged)
