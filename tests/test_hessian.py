"""Hessian estimators against the exact Hessian of a tiny model (torch.func.hessian)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from emq.search_space.hessian import HessianProblem, hutchinson, power_iteration, rademacher


def tiny_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False),
        nn.BatchNorm2d(2),
        nn.Tanh(),
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(48, 4),
    ).eval()


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (12,), generator=g)
    names = ["0.weight", "3.weight", "6.weight"]
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    return model, x, y, names, weights


@pytest.fixture(scope="module")
def exact(setup) -> torch.Tensor:
    return exact_hessian(*setup)


def exact_hessian(model, x, y, names, weights) -> torch.Tensor:
    """The exact Hessian of the mean loss w.r.t. the concatenated weights, in float64."""
    shapes = [w.shape for w in weights]
    sizes = [w.numel() for w in weights]
    base = {
        k: v.detach().double() for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_floating_point()
    }

    def loss(flat):
        state = dict(base)
        state.update({n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)})
        return F.cross_entropy(functional_call(model, state, (x.double(),)), y)

    return hessian(loss)(torch.cat([w.detach().reshape(-1) for w in weights]).double())


def blocks(h: torch.Tensor, weights) -> list[torch.Tensor]:
    edges = np.cumsum([0] + [w.numel() for w in weights])
    return [h[edges[i] : edges[i + 1], edges[i] : edges[i + 1]] for i in range(len(weights))]


def test_hvp_is_exact_and_batch_weighted(setup, exact):
    model, x, y, names, weights = setup
    h = exact.float()
    v = [torch.randn_like(w) for w in weights]
    expected = h @ torch.cat([t.reshape(-1) for t in v])
    one = HessianProblem(model, weights, [(x, y)]).hvp(v)
    uneven = HessianProblem(model, weights, [(x[:5], y[:5]), (x[5:], y[5:])]).hvp(v)  # 5 + 7 images
    for got in (one, uneven):
        torch.testing.assert_close(torch.cat([t.reshape(-1) for t in got]), expected, rtol=1e-4, atol=1e-5)


def test_hutchinson_matches_exact_diagonal_and_traces(setup, exact):
    """Tolerance: 4 standard errors of the Rademacher estimator, from the exact Hessian.

    For k probes, the diagonal estimate of entry i has variance sum_{j!=i} H_ij^2 / k; the
    trace estimate of layer l (probes span all layers) has variance
    (2 sum_{i!=j in l} H_ij^2 + sum_{i in l, j not in l} H_ij^2) / k.
    """
    model, x, y, names, weights = setup
    k = 1500
    res = hutchinson(HessianProblem(model, weights, [(x, y)]), min_probes=k, max_probes=k, tol=0.0, seed=0)
    assert res.probes == k and not res.converged
    h = exact.float()
    off = h - torch.diag(h.diagonal())
    diag = torch.cat([d.reshape(-1) for d in res.diag])
    expected_err = float(off.norm()) / k**0.5  # root of the summed variances
    assert float((diag - h.diagonal()).norm()) < 1.5 * expected_err
    edges = np.cumsum([0] + [w.numel() for w in weights])
    for i, (est, block) in enumerate(zip(res.trace, blocks(h, weights), strict=True)):
        rows = h[edges[i] : edges[i + 1]]
        cross = rows.pow(2).sum() - block.pow(2).sum()
        sd = float(((2 * (block - torch.diag(block.diagonal())).pow(2).sum() + cross) / k).sqrt())
        assert abs(est - float(block.trace())) < 4 * sd + 1e-6
    # the traces are exactly the sums of the diagonal estimates (same probes)
    np.testing.assert_allclose(res.trace, [float(d.sum()) for d in res.diag], rtol=1e-5)


def test_hutchinson_is_seeded_and_respects_probe_limits(setup):
    model, x, y, names, weights = setup
    problem = HessianProblem(model, weights, [(x, y)])
    a = hutchinson(problem, min_probes=4, max_probes=20, tol=1e-2, seed=5)
    b = hutchinson(problem, min_probes=4, max_probes=20, tol=1e-2, seed=5)
    c = hutchinson(problem, min_probes=4, max_probes=20, tol=1e-2, seed=6)
    np.testing.assert_array_equal(a.trace, b.trace)
    for da, db in zip(a.diag, b.diag, strict=True):
        torch.testing.assert_close(da, db, rtol=0, atol=0)
    assert not np.array_equal(a.trace, c.trace)
    assert 4 <= a.probes <= 20
    assert hutchinson(problem, min_probes=6, max_probes=6, tol=0.0).probes == 6  # tol 0: runs to the maximum
    assert hutchinson(problem, min_probes=3, max_probes=50, tol=1e9).probes == 3  # huge tol: stops at the minimum
    with pytest.raises(ValueError):
        hutchinson(problem, min_probes=5, max_probes=4)


def test_convergence_uses_absolute_denominator():
    """A negative running trace must not stop the loop early (the NNCF pitfall)."""

    class Fixed:
        # H = diag(-1, 3): traces per "layer" are -1 and 3, with no probe noise
        params = [torch.zeros(1), torch.zeros(1)]

        def hvp(self, v):
            return [-v[0], 3 * v[1]]

    res = hutchinson(Fixed(), min_probes=2, max_probes=10, tol=1e-3)
    assert res.converged and res.probes == 2
    np.testing.assert_allclose(res.trace, [-1.0, 3.0])


def test_power_iteration_matches_exact_block_eigenvalues(setup, exact):
    model, x, y, names, weights = setup
    h = exact
    res = power_iteration(HessianProblem(model, weights, [(x, y)]), iters=300, tol=1e-7, seed=0)
    for lam, block in zip(res.eig, blocks(h, weights), strict=True):
        ev = torch.linalg.eigvalsh(block)
        dominant = float(ev[ev.abs().argmax()])
        assert lam == pytest.approx(dominant, rel=2e-2)
    assert (res.iterations >= 2).all() and (res.iterations <= 300).all()
    again = power_iteration(HessianProblem(model, weights, [(x, y)]), iters=300, tol=1e-7, seed=0)
    np.testing.assert_array_equal(res.eig, again.eig)


def test_hutchinson_reports_per_layer_convergence(setup, exact):
    model, x, y, names, weights = setup
    problem = HessianProblem(model, weights, [(x, y)])
    res = hutchinson(problem, min_probes=5, max_probes=5, tol=0.0, seed=2)
    prev, cur = res.history[-2], res.history[-1]
    np.testing.assert_allclose(res.layer_change, np.abs(cur - prev) / np.abs(prev))
    assert res.change == pytest.approx(np.abs(cur - prev).sum() / np.abs(prev).sum())
    # each probe's own v^T H v, recomputed from the same seeded probes, gives the standard error
    gen = torch.Generator().manual_seed(2)
    h = exact.float()
    values = []
    for _ in range(5):
        v = torch.cat([rademacher(w.shape, gen, w.device).reshape(-1) for w in weights])
        hv = h @ v
        edges = np.cumsum([0] + [w.numel() for w in weights])
        values.append([float(v[edges[i] : edges[i + 1]] @ hv[edges[i] : edges[i + 1]]) for i in range(len(weights))])
    values = np.array(values)
    np.testing.assert_allclose(res.trace, values.mean(0), rtol=1e-3)
    np.testing.assert_allclose(
        res.layer_rel_stderr, values.std(0, ddof=1) / np.sqrt(5) / np.abs(values.mean(0)), rtol=1e-3
    )
    one = hutchinson(problem, min_probes=1, max_probes=1, tol=0.0)
    assert np.isinf(one.layer_change).all() and np.isinf(one.change)


def test_power_iteration_defaults_and_convergence_report(setup, exact):
    """HAWQ's defaults (100 iterations, relative tolerance 1e-3) converge on the tiny model; the report is exact."""
    import inspect

    defaults = {
        k: p.default
        for k, p in inspect.signature(power_iteration).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    assert defaults["iters"] == 100 and defaults["tol"] == 1e-3
    model, x, y, names, weights = setup
    problem = HessianProblem(model, weights, [(x, y)])
    res = power_iteration(problem)
    assert res.converged.all() and (res.change < 1e-3).all() and (res.iterations <= 100).all()
    for lam, block in zip(res.eig, blocks(exact, weights), strict=True):
        ev = torch.linalg.eigvalsh(block)
        assert lam == pytest.approx(float(ev[ev.abs().argmax()]), rel=2e-2)
    # the reported change is the last relative step of the Rayleigh quotient
    one, two = power_iteration(problem, iters=1), power_iteration(problem, iters=2, tol=0.0)
    assert np.isinf(one.change).all() and not one.converged.any() and (one.iterations == 1).all()
    np.testing.assert_allclose(two.change, np.abs(two.eig - one.eig) / np.abs(one.eig))
    assert not two.converged.any() and (two.iterations == 2).all()
