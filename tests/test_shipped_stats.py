"""Shipped statistics: used whenever weights, data, layers, settings and bits match, cut to the
requested bits, completed from the data when partial; never used for anything else."""

import dataclasses

import pytest
import torch
from test_stats import Tiny
from torch.utils.data import TensorDataset

from emq.data import DataSplits
from emq.datasplits import base_fingerprint
from emq.errors import EmqError
from emq.hashing import state_dict_digest
from emq.layermap import build_layer_map
from emq.search_space import shipped
from emq.search_space.netstats import (
    MODEL_FIELDS,
    TENSOR_FIELDS,
    load_stats,
    omit_fields,
    save_stats,
    select_bits,
)
from emq.search_space.stats import StatsSettings, compute_stats, shipped_stats
from emq.target import Target

FAST = StatsSettings(
    calib_size=12,
    batch_size=5,
    hessian_images=12,
    hessian_batch_size=12,
    hessian_min_probes=4,
    hessian_max_probes=8,
    eig_iters=3,
    act_cap=6,
    act_bits=4,
    negative_trace="keep",
)


@pytest.fixture
def setting(tmp_path):
    torch.manual_seed(0)
    model = Tiny().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (20,), generator=g)
    data = DataSplits(
        name="tiny",
        num_classes=5,
        in_channels=1,
        input_size=8,
        calib_pool=(x, y),
        test=TensorDataset(x[:4], y[:4]),
        fingerprint="tiny-data",
    )
    layer_map = build_layer_map(model, 8, "tiny")
    full = compute_stats(model, layer_map, data, bits=(2, 3, 4), settings=FAST, use_cache=False, progress=False)
    full.meta.pop("cache", None)
    full.meta["source"] = shipped.source_of(state_dict_digest(model), data.fingerprint, layer_map)
    path = tmp_path / "tiny.stats.pt"
    save_stats(omit_fields(full), path)
    return Target("tiny", model, layer_map, data), full, path


def _same(a, b):
    assert a.bits == b.bits and a.names == b.names
    for la, lb in zip(a.layers, b.layers, strict=True):
        for f in TENSOR_FIELDS:
            assert torch.equal(getattr(la, f), getattr(lb, f)), f
        assert (la.trace, la.eig) == (lb.trace, lb.eig)


def test_a_partial_file_completes_to_the_computed_statistics(setting):
    target, full, path = setting
    got = shipped_stats(target, bits=(2, 3, 4), settings=FAST, files=[path])
    assert got is not None and got.meta["shipped"] == str(path) and not got.omitted
    _same(got, full)
    assert got.meta["act_ranges"] == full.meta["act_ranges"]


@pytest.mark.parametrize("with_data", [True, False])
def test_a_file_without_the_model_fields_completes_to_the_computed_statistics(setting, tmp_path, with_data):
    """W, VG and SG (and E = Q - W with them) are recomputed from the model alone, exactly; with the
    activation fields kept, the file completes without any data."""
    target, full, _ = setting
    if not with_data:
        target = dataclasses.replace(target, data=None)
    path = tmp_path / "lean.stats.pt"
    save_stats(omit_fields(full, MODEL_FIELDS), path, compact=False)
    assert set(load_stats(path, partial=True).omitted) == set(MODEL_FIELDS)
    assert load_stats(path, partial=True).layers[0].E.numel() == 0
    got = shipped_stats(target, bits=(2, 3, 4), settings=FAST, files=[path])
    assert got is not None and not got.omitted
    _same(got, full)
    some = shipped_stats(target, bits=(2, 4), settings=FAST, files=[path])
    _same(some, select_bits(full, (2, 4)))  # the bits are cut before E is restored
    save_stats(omit_fields(full, MODEL_FIELDS), path, compact=True)  # the bundle format: exact where recomputed
    got = shipped_stats(target, bits=(2, 3, 4), settings=FAST, files=[path])
    for lg, lf in zip(got.layers, full.layers, strict=True):
        assert all(torch.equal(getattr(lg, f), getattr(lf, f)) for f in MODEL_FIELDS)
        assert torch.equal(lg.E, lg.Q - lf.W.unsqueeze(0)) and torch.allclose(lg.E, lf.E, atol=1e-3)
    both = tmp_path / "both.stats.pt"
    save_stats(omit_fields(omit_fields(full), MODEL_FIELDS), both, compact=False)
    assert set(load_stats(both, partial=True).omitted) == set(MODEL_FIELDS) | {"A", "Y", "GY", "AE"}
    if with_data:
        _same(shipped_stats(target, bits=(2, 3, 4), settings=FAST, files=[both]), full)
    else:
        with pytest.raises(EmqError, match="leave out A, Y, GY, AE, computed from the data: pass --data"):
            shipped_stats(target, bits=(2, 3, 4), settings=FAST, files=[both])


def test_a_subset_of_the_bits_is_what_computing_those_bits_gives(setting):
    target, _, path = setting
    got = shipped_stats(target, bits=(2, 4), settings=FAST, files=[path])
    want = compute_stats(target, bits=(2, 4), settings=FAST, use_cache=False, progress=False)
    _same(got, want)


def test_a_target_limited_to_its_first_test_images_uses_the_bundle(setting):
    """Statistics never see test images: a bench's target cut to its first N of them (`limit_test`, which
    marks its fingerprint) is served by the bundle of the whole data."""
    from emq.bench.evaluation import limit_test

    target, _, path = setting
    limited = dataclasses.replace(target, data=limit_test(target.data, 5))
    assert limited.data.fingerprint != target.data.fingerprint
    got = shipped_stats(limited, bits=(2, 4), settings=FAST, files=[path])
    assert got is not None
    _same(got, shipped_stats(target, bits=(2, 4), settings=FAST, files=[path]))


@pytest.mark.parametrize("change", ["settings", "bits", "weights", "data"])
def test_statistics_of_anything_else_are_not_used(setting, change):
    target, _, path = setting
    settings, bits = FAST, (2, 3, 4)
    if change == "settings":
        settings = dataclasses.replace(FAST, act_cap=5)
    elif change == "bits":
        bits = (2, 5)
    elif change == "weights":
        with torch.no_grad():
            target.model.head.weight[0, 0] += 1e-3
    else:
        target = dataclasses.replace(target, data=dataclasses.replace(target.data, fingerprint="other-data"))
    assert shipped_stats(target, bits=bits, settings=settings, files=[path]) is None


def test_a_partial_file_is_never_read_as_complete(setting):
    *_, path = setting
    with pytest.raises(EmqError, match="partial statistics"):
        load_stats(path)
    assert load_stats(path, partial=True).omitted == ("A", "Y", "GY", "AE")


def test_without_data_a_partial_file_asks_for_it(setting):
    target, _, path = setting
    with pytest.raises(EmqError, match="pass --data"):
        shipped_stats(dataclasses.replace(target, data=None), bits=(2, 3, 4), settings=FAST, files=[path])


def test_compute_stats_uses_a_matching_bundle_unless_told_not_to(setting, tmp_path, monkeypatch):
    target, full, path = setting
    model, layer_map, data = target.model, target.layer_map, target.data  # a bare model: compute_stats's other form
    monkeypatch.setattr("emq.bench.bundles.stats_files", lambda name: [path] if name == "tiny" else [])
    got = compute_stats(model, layer_map, data, bits=(2, 3), settings=FAST, cache_dir=tmp_path, progress=False)
    assert got.meta["shipped"] == str(path) and "cache" not in got.meta
    _same(got, select_bits(full, (2, 3)))
    fresh = compute_stats(model, layer_map, data, bits=(2, 3), settings=FAST, use_cache=False, progress=False)
    assert "shipped" not in fresh.meta


def test_every_shipped_file_records_what_it_was_computed_from():
    from emq.bench import Bench
    from emq.bench.bundles import BUNDLES

    for name, bundle in BUNDLES.items():
        if bundle.stats_path is None or not bundle.path.is_file():  # a zoo bench not built yet
            continue
        ns = load_stats(bundle.stats_path, partial=True)
        meta = Bench.open(name).meta
        assert ns.meta["source"]["weights"] == meta["weights_hash"], name
        assert ns.meta["source"]["data"] == base_fingerprint(meta["data_fingerprint"]), name
