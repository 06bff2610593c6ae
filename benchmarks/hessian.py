"""Per-layer Hessian traces and diagonal (emq) vs PyHessian's whole-model trace, same run.

For each model (the default model on its calibration images; torchvision resnet18 at 32x32,
random weights, seeded random images and labels since nothing is downloaded), both sides get
the same model, batch, parameter set (the quantizable layers' weights) and probe count; the
convergence tests are switched off so both run exactly --probes Hutchinson probes. Timed:
emq's `hutchinson` (gradient graph + probes; gives every layer's trace *and* the diagonal)
against PyHessian's `hessian(...)` + `.trace()` (gradient graph + probes; one number).
Target: ratio emq / PyHessian <= 1.

    python benchmarks/hessian.py [--probes 20] [--batch 64] [--threads 1] [--repeats 2] [--eig-iters 0]

    Needs the bench extra (PyHessian): pip install -e ".[bench]"
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

try:
    from pyhessian import hessian as PyHessian
except ModuleNotFoundError as e:  # a benchmark-only dependency
    raise ModuleNotFoundError(
        f"{e}: this benchmark needs the bench extra, pip install -e '.[bench]'", name=e.name
    ) from e

from emq.layermap import build_layer_map
from emq.search_space.hessian import HessianProblem, hutchinson, power_iteration
from emq.tables import markdown_table
from emq.target import resolve_target


def only_layer_weights(model: torch.nn.Module, names: list[str]) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """An eval-mode copy whose only trainable parameters are the mapped layers' weights."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    mods = dict(work.named_modules())
    weights = [mods[n].weight.requires_grad_(True) for n in names]
    return work, weights


def time_ours(model, names, x, y, *, probes):
    work, weights = only_layer_weights(model, names)
    t0 = time.perf_counter()
    res = hutchinson(HessianProblem(work, weights, [(x, y)]), min_probes=probes, max_probes=probes, tol=0.0, seed=0)
    return time.perf_counter() - t0, res, weights


def time_pyhessian(model, names, x, y, *, probes):
    work, _ = only_layer_weights(model, names)
    t0 = time.perf_counter()
    vhv = PyHessian(work, F.cross_entropy, data=(x, y), cuda=False).trace(
        maxIter=probes, tol=float("-inf")
    )  # -inf: never stop early
    return time.perf_counter() - t0, vhv


def bench_model(
    label: str,
    model: torch.nn.Module,
    names: list[str],
    *,
    x: torch.Tensor,
    y: torch.Tensor,
    probes: int,
    eig_iters: int,
    repeats: int,
) -> dict:
    time_ours(model, names, x, y, probes=1)  # warm-up (allocator, kernels), untimed
    time_pyhessian(model, names, x, y, probes=1)
    ours_s = ref_s = float("inf")
    for _ in range(repeats):  # interleaved, best of `repeats`: robust to a busy machine
        t, res, weights = time_ours(model, names, x, y, probes=probes)
        ours_s = min(ours_s, t)
        t, vhv = time_pyhessian(model, names, x, y, probes=probes)
        ref_s = min(ref_s, t)
    assert len(vhv) == probes

    eig_s = float("nan")
    eig = np.full(len(names), np.nan)
    if eig_iters > 0:
        eig_model, eig_weights = only_layer_weights(model, names)
        t0 = time.perf_counter()
        eig = power_iteration(HessianProblem(eig_model, eig_weights, [(x, y)]), iters=eig_iters, tol=1e-3, seed=0).eig
        eig_s = time.perf_counter() - t0

    # standard error of PyHessian's mean, from its own per-probe values
    ref_trace, ref_se = float(np.mean(vhv)), float(np.std(vhv, ddof=1) / np.sqrt(probes))
    print(f"\n## {label}: {len(names)} layers, batch {tuple(x.shape)}, {probes} probes\n")
    rows = [
        [n, float(t), float(t) / w.numel(), float(e)] for n, t, w, e in zip(names, res.trace, weights, eig, strict=True)
    ]
    print(markdown_table(["layer", "Tr(H)", "Tr(H)/n", "eig max"], rows))
    print(f"\nsum of per-layer traces (emq)  {res.trace.sum():.4f}")
    print(f"whole-model trace (PyHessian) {ref_trace:.4f} +- {ref_se:.4f} (1 s.e.)")
    print(
        f"time: emq per-layer traces + diagonal {ours_s:.3f} s | PyHessian whole-model trace {ref_s:.3f} s | "
        f"ratio {ours_s / ref_s:.2f}"
    )
    if eig_iters > 0:
        print(f"time: emq per-layer top eigenvalues ({eig_iters} power iterations max) {eig_s:.3f} s")
    return {"model": label, "ours_s": ours_s, "pyhessian_s": ref_s, "ratio": ours_s / ref_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: stable timings on a shared machine)"
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="timed runs per side, interleaved; the best counts (default 2)"
    )
    ap.add_argument("--eig-iters", type=int, default=0, help="also time per-layer power iteration (default: off)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    target = resolve_target("default")
    x, y = target.data.calibration(args.batch, 0)
    results = [
        bench_model(
            "default (ResNet-20 w8, 24 px digits)",
            target.model,
            [layer.name for layer in target.layer_map.layers],
            x=x,
            y=y,
            probes=args.probes,
            eig_iters=args.eig_iters,
            repeats=args.repeats,
        )
    ]

    import torchvision

    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(num_classes=10).eval()
    lm = build_layer_map(r18, 32, "resnet18")
    g = torch.Generator().manual_seed(0)
    xr = torch.randn(args.batch, 3, 32, 32, generator=g)
    yr = torch.randint(0, 10, (args.batch,), generator=g)
    results.append(
        bench_model(
            "resnet18 (random weights, 32 px random images)",
            r18,
            [layer.name for layer in lm.layers],
            x=xr,
            y=yr,
            probes=args.probes,
            eig_iters=args.eig_iters,
            repeats=args.repeats,
        )
    )

    print("\n## summary\n")
    print(
        markdown_table(
            ["model", "emq s", "PyHessian s", "ratio"],
            [[r["model"], r["ours_s"], r["pyhessian_s"], r["ratio"]] for r in results],
        )
    )


if __name__ == "__main__":
    main()
