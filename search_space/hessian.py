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
  estimate never ends it early), with explicit minimum and maximum probe counts;
- the top eigenvalue of each layer's own Hessian block H_ll (HAWQ-V1) comes from power
  iteration with per-layer stopping; it is the eigenvalue of largest magnitude, with sign.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


@dataclass
class HutchinsonResult:
    diag: list[torch.Tensor]  # per parameter, the estimate of diag(H)
    trace: np.ndarray  # [L] per-parameter trace estimates (float64)
    history: np.ndarray  # [probes, L] running-mean traces after each probe
    probes: int
    converged: bool


def rademacher(shape: torch.Size, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """±1 entries with equal probability, drawn on CPU from `gen` so results do not depend on device."""
    return (torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.int8) * 2 - 1).to(device=device, dtype=torch.float32)


def hutchinson(problem: HessianProblem, min_probes: int = 8, max_probes: int = 32, tol: float = 1e-2, seed: int = 0) -> HutchinsonResult:
    """Per-layer traces and the diagonal of H from the same seeded Rademacher probes."""
    if not 1 <= min_probes <= max_probes:
        raise ValueError(f"need 1 <= min_probes ({min_probes}) <= max_probes ({max_probes})")
    gen = torch.Generator().manual_seed(seed)
    diag_sum = [torch.zeros_like(p) for p in problem.params]
    trace_sum = np.zeros(len(problem.params))
    history: list[np.ndarray] = []
    converged = False
    for k in range(1, max_probes + 1):
        v = [rademacher(p.shape, gen, p.device) for p in problem.params]
        hv = problem.hvp(v)
        for i, (vi, hi) in enumerate(zip(v, hv, strict=True)):
            vhv = vi * hi
            diag_sum[i].add_(vhv)
            trace_sum[i] += float(vhv.sum(dtype=torch.float64))
        history.append(trace_sum / k)
        if k >= min_probes and k > 1:
            prev, cur = history[-2], history[-1]
            change = np.abs(cur - prev).sum() / max(np.abs(prev).sum(), _TINY)
            if change < tol:
                converged = True
                break
    probes = len(history)
    log.info("Hutchinson: %d probes, converged=%s", probes, converged)
    return HutchinsonResult([d / probes for d in diag_sum], history[-1].copy(), np.array(history), probes, converged)


def power_iteration(problem: HessianProblem, iters: int = 10, tol: float = 1e-2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dominant eigenvalue of every layer's Hessian block H_ll; returns (eigenvalues, iterations used).

    A layer stops when its Rayleigh quotient changes by less than `tol` relative to its
    magnitude; the still-moving layers share each pass over the batches.
    """
    if iters < 1:
        raise ValueError(f"power iteration needs iters >= 1, got {iters}")
    gen = torch.Generator().manual_seed(seed)
    vs: dict[int, torch.Tensor] = {}
    for i, p in enumerate(problem.params):
        v = torch.randn(tuple(p.shape), generator=gen).to(device=p.device, dtype=torch.float32)
        vs[i] = v / v.norm().clamp_min(_TINY)
    eig = np.zeros(len(problem.params))
    used = np.zeros(len(problem.params), dtype=np.int64)
    active = dict(vs)
    for it in range(1, iters + 1):
        hv = problem.block_hvps(active)
        nxt: dict[int, torch.Tensor] = {}
        for i, h in hv.items():
            lam = float((active[i] * h).sum(dtype=torch.float64))
            used[i] = it
            done = it > 1 and abs(lam - eig[i]) < tol * max(abs(eig[i]), _TINY)
            eig[i] = lam
            norm = h.norm()
            if done or float(norm) == 0.0:
                continue
            nxt[i] = h / norm
        active = nxt
        if not active:
            break
    return eig, used
