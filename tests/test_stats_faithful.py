"""The statistics behind the faithful baselines (Synflow's linearised gradient, the per-sample
Fisher), Hessian convergence reporting, progress bars and the cache location."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from test_stats import Tiny  # the statistics tests' network: conv, BN, conv, linear
from torch import nn

import emq.search_space.stats as stats_mod
from emq.cli.main import main
from emq.layermap import build_layer_map
from emq.search_space.stats import (
    StatsSettings,
    compute_stats,
    convergence_summary,
    default_cache_dir,
    summarize,
)

FAST = StatsSettings(
    batch_size=5,
    hessian_images=12,
    hessian_batch_size=12,
    hessian_min_probes=4,
    hessian_max_probes=8,
    eig_iters=3,
    act_cap=8,
    act_bits=4,
)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.weight.uniform_(-1.0, 1.0)  # negative scales and shifts: |.| must reach them
        model.bn.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (12,), generator=g)
    return model, build_layer_map(model, 8, "tiny"), x, y


class MLP(nn.Module):
    """Linear -> BatchNorm (eval) -> ReLU -> Linear: Synflow's linearised score has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4, bias=False)
        self.bn = nn.BatchNorm1d(4)
        self.fc2 = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_synflow_gradient_matches_closed_form():
    """R = sum_k sum_i |W2|_ki relu(a_i), a = (|W1| 1 - |mu|) / sqrt(|var| + eps) * |gamma| + |beta|."""
    torch.manual_seed(3)
    model = MLP().eval()
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.tensor([0.5, -3.0, 0.1, -0.2]))
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, -0.7]))
        model.bn.bias.copy_(torch.tensor([-0.1, 0.2, -0.3, 0.05]))
    w1, w2 = model.fc1.weight.detach().double().abs(), model.fc2.weight.detach().double().abs()
    bn = model.bn
    scale = bn.weight.detach().double().abs() / (bn.running_var.double().abs() + bn.eps).sqrt()
    a = (w1.sum(dim=1) - bn.running_mean.double().abs()) * scale + bn.bias.detach().double().abs()
    on = (a > 0).double()
    assert 0 < on.sum() < 4  # the ReLU gate matters in this example
    d_w1 = (w2.sum(dim=0) * on * scale)[:, None].expand_as(w1)  # dR/d|W1|_ij, input all ones
    d_w2 = torch.relu(a)[None, :].expand_as(w2)
    before = copy.deepcopy(model.state_dict())
    got = stats_mod._synflow_grad(model, ["fc1", "fc2"], torch.Size([3]))
    torch.testing.assert_close(got[0], d_w1)
    torch.testing.assert_close(got[1], d_w2)
    for k, v in model.state_dict().items():  # the caller's (signed) weights are untouched
        assert torch.equal(v, before[k]), k


def test_stats_carry_synflow_and_per_sample_fisher(tiny):
    model, lm, x, y = tiny
    ns = compute_stats(model, lm, (x, y), settings=FAST, use_cache=False, progress=False)
    names = ns.names
    # Synflow: an independent |state|-linearised copy in float64, all-ones input, R = sum of outputs
    lin = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in [*lin.parameters(), *lin.buffers()]:
            if p.is_floating_point():
                p.abs_()
    mods = dict(lin.named_modules())
    sg = torch.autograd.grad(lin(torch.ones(1, 1, 8, 8, dtype=torch.float64)).sum(), [mods[n].weight for n in names])
    # Fisher: an explicit loop over the images, each image's own loss
    ref = dict(model.named_modules())
    weights = [ref[n].weight for n in names]
    per_sample = [
        torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), weights) for i in range(x.shape[0])
    ]
    for k, layer in enumerate(ns.layers):
        torch.testing.assert_close(layer.SG, sg[k].float())
        assert not torch.allclose(layer.SG.abs(), layer.VG.abs())  # the signed probe is a different statistic
        fd = torch.stack([g[k] for g in per_sample]).pow(2).mean(dim=0)
        torch.testing.assert_close(layer.FD, fd, rtol=1e-4, atol=1e-9)
        assert bool((layer.FD >= layer.G.pow(2) - 1e-9).all())  # E[g^2] >= (E g)^2
        assert float((layer.FD - layer.G.pow(2)).sum()) > 0.1 * float(layer.FD.sum())  # and not the same thing


def test_per_sample_fisher_chunks_and_fallback_agree(tiny, monkeypatch):
    model, lm, x, y = tiny
    names = [layer.name for layer in lm.layers]
    work, _ = stats_mod._private_copy(model, lm)
    whole = stats_mod._per_sample_fisher(work, names, x, y, batch_size=64, progress=False)
    limit = stats_mod._PER_SAMPLE_FLOATS
    monkeypatch.setattr(stats_mod, "_PER_SAMPLE_FLOATS", 1)  # one image per chunk
    chunked = stats_mod._per_sample_fisher(work, names, x, y, batch_size=64, progress=False)
    monkeypatch.setattr(stats_mod, "_PER_SAMPLE_FLOATS", limit)  # chunks of 5, 5, 2 images below

    def no_vmap(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("vmap: not supported here")

        return fail

    monkeypatch.setattr(stats_mod, "vmap", no_vmap)
    looped = stats_mod._per_sample_fisher(work, names, x, y, batch_size=5, progress=False)
    for a, b, c in zip(whole, chunked, looped, strict=True):
        assert float(a.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=0)  # relative: Fisher entries are far below the default atol
        torch.testing.assert_close(a, c, rtol=1e-4, atol=0)


def test_convergence_is_reported_per_layer(tiny):
    model, lm, x, y = tiny
    ns = compute_stats(model, lm, (x, y), settings=FAST, use_cache=False, progress=False)
    conv = ns.convergence
    L = len(ns.layers)
    trace, eig = conv["trace"], conv["eig"]
    assert trace["tol"] == FAST.hessian_tol and trace["max_probes"] == FAST.hessian_max_probes
    assert FAST.hessian_min_probes <= trace["probes"] <= FAST.hessian_max_probes
    assert len(trace["layer_change"]) == L and all(c >= 0 for c in trace["layer_change"])
    assert trace["converged"] == (trace["change"] < FAST.hessian_tol)
    assert (
        eig["max_iters"] == FAST.eig_iters
        and len(eig["iterations"]) == len(eig["change"]) == len(eig["converged"]) == L
    )
    for it, ch, ok in zip(eig["iterations"], eig["change"], eig["converged"], strict=True):
        assert 1 <= it <= FAST.eig_iters
        assert ok == (ch is not None and ch < FAST.eig_tol)
        assert ok or it == FAST.eig_iters  # a layer stops early only when converged
    rows = summarize(ns)["layers"]
    assert [r["hessian_eig_iterations"] for r in rows] == eig["iterations"]
    assert [r["hessian_trace_change"] for r in rows] == trace["layer_change"]
    assert summarize(ns)["hessian"]["convergence"] == conv
    line = convergence_summary(ns)
    assert f"{trace['probes']} probes" in line and f"{sum(eig['converged'])}/{L} layers" in line
    skipped = compute_stats(
        model, lm, (x, y), settings=StatsSettings(**{**FAST.to_json(), "eig_iters": 0}), use_cache=False, progress=False
    )
    assert skipped.convergence["eig"]["skipped"] and "skipped" in convergence_summary(skipped)


def test_hawq_defaults():
    s = StatsSettings()
    assert (s.eig_iters, s.eig_tol) == (100, 1e-3)
    assert s.hessian_max_probes >= 64 and s.hessian_tol == 1e-2


def test_progress_bars_on_stderr(tiny, capsys):
    model, lm, x, y = tiny
    compute_stats(model, lm, (x, y), settings=FAST, use_cache=False, progress=False)
    assert "Hessian trace" not in capsys.readouterr().err
    compute_stats(model, lm, (x, y), settings=FAST, use_cache=False)
    err = capsys.readouterr().err
    assert "Hessian trace" in err and "Hessian eigenvalues" in err and "per-sample gradients" in err


def test_cache_dir_and_env_name_the_same_root(tiny, tmp_path, monkeypatch):
    model, lm, x, y = tiny
    first = compute_stats(model, lm, (x, y), settings=FAST, cache_dir=tmp_path, progress=False)
    files = list((tmp_path / "stats").glob("*.pt"))
    assert len(files) == 1 and first.meta["cache"]["path"] == str(files[0])
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == default_cache_dir(tmp_path) == tmp_path / "stats"
    again = compute_stats(model, lm, (x, y), settings=FAST, progress=False)
    assert again.meta["cache"]["hit"] is True and again.meta["cache"]["path"] == str(files[0])
    monkeypatch.delenv("EMQ_CACHE_DIR")
    assert default_cache_dir() == default_cache_dir(None) != tmp_path / "stats"


def test_cli_reports_convergence(tmp_path, capsys):
    args = [
        "stats",
        "--calib-size",
        "8",
        "--batch-size",
        "8",
        "--hessian-images",
        "8",
        "--hessian-batch-size",
        "8",
        "--hessian-samples",
        "3",
        "--eig-iters",
        "2",
        "--eig-tol",
        "0.5",
        "--cache-dir",
        str(tmp_path),
    ]
    assert main(args + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"]["eig_tol"] == 0.5 and list((tmp_path / "stats").glob("*.pt"))
    conv = doc["hessian"]["convergence"]
    assert conv["trace"]["probes"] == 3 and len(conv["eig"]["iterations"]) == len(doc["layers"]) == 22
    first = doc["layers"][0]
    assert first["hessian_eig_iterations"] == conv["eig"]["iterations"][0] and first["hessian_trace_probes"] == 3
    assert {"hessian_trace_change", "hessian_eig_change", "hessian_eig_converged", "synflow", "fisher_trace"} <= set(
        first
    )
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Hessian trace NOT converged: 3 probes" in text and "top eigenvalue converged in" in text
