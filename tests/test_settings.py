"""Each setting is declared once: the estimator, the CLI flags and the statistics derive from the dataclasses."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from emq.cli.main import build_parser
from emq.evolution import DPSConfig, ProxySearch, SearchConfig
from emq.evolution.estimator import _PARAM_OF_FIELD
from emq.quant import PTQSettings, QuantSpec
from emq.search_space.stats import StatsSettings
from emq.specs import ParameterError

# ProxySearch parameters that are not campaign settings: where, what and how it runs
ESTIMATOR_ONLY = {"metric", "space", "executor", "out_dir", "warm_start", "progress"}


def test_estimator_params_are_the_campaign_fields_with_their_defaults():
    defaults = ProxySearch().get_params(deep=False)
    fields = {_PARAM_OF_FIELD.get(f.name, f.name): f for f in dataclasses.fields(SearchConfig)}
    assert set(defaults) - ESTIMATOR_ONLY == set(fields)
    config = SearchConfig()
    for param, f in fields.items():
        expected = getattr(config, f.name)
        got = defaults[param]
        if f.name == "dps":  # a bool switching the default DPSConfig on or off
            assert DPSConfig(enabled=got) == expected
        else:
            assert got == expected, param
    assert ProxySearch().config() == config


def test_get_set_params_come_from_scikit_learn():
    from sklearn.base import BaseEstimator, clone

    est = ProxySearch(generations=3, parsimony=0.1)
    assert isinstance(est, BaseEstimator)
    assert "get_params" not in ProxySearch.__dict__  # not hand-written
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert est.set_params(population=8).config().population == 8
    with pytest.raises(ValueError, match="not a ProxySearch parameter"):
        est.set_params(populaton=8)


def _flags(command: str) -> dict[str, object]:
    import argparse

    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a for a in sub._actions}


@pytest.mark.parametrize("command,cls", [("stats", StatsSettings), ("search", SearchConfig), ("search", DPSConfig)])
def test_every_field_with_help_is_a_flag_with_its_default(command, cls):
    actions = _flags(command)
    declared = [f for f in dataclasses.fields(cls) if f.metadata.get("help")]
    assert declared
    for f in declared:
        action = actions[f.name]
        assert f.metadata["help"].format(default=f.default) == action.help
        assert action.default == f.metadata.get("flag_default", f.default)


def test_stats_flags_build_the_default_settings():
    parser = build_parser("stats")
    from emq.cli.cmd_stats import settings_from_args

    assert settings_from_args(parser.parse_args(["stats"])) == StatsSettings()
    capped = settings_from_args(parser.parse_args(["stats", "--hessian-samples", "4", "--symmetric"]))
    assert (capped.hessian_min_probes, capped.hessian_max_probes, capped.weight_symmetric) == (4, 4, True)


def test_statistics_and_ptq_share_one_quantization_spec():
    quant = {f.name for f in dataclasses.fields(QuantSpec)}
    own = lambda cls: {f.name for f in dataclasses.fields(cls)} - quant  # noqa: E731
    assert issubclass(PTQSettings, QuantSpec) and issubclass(StatsSettings, QuantSpec)
    assert not any(name in inspect.getsource(StatsSettings) for name in ("act_bits:", "weight_quantizer:"))
    ptq = PTQSettings(act_bits=4, weight_symmetric=True, calib_seed=3)
    stats = StatsSettings.from_ptq(ptq)
    assert stats.quant_spec() == ptq.quant_spec() == QuantSpec(act_bits=4, weight_symmetric=True)
    assert stats.rounding_calib_seed == 3 and own(StatsSettings) >= {"rounding_calib_size", "calib_size"}


def test_the_model_and_its_data_travel_as_one_model_spec():
    from emq.allocation import allocator_for
    from emq.target import ModelSpec, as_model_spec, resolve_target

    spec = ModelSpec("default", weights=None)
    assert as_model_spec("default") == spec and as_model_spec(spec) is spec
    with pytest.raises(ParameterError, match="inside the ModelSpec"):
        as_model_spec(spec, data="default")
    assert spec.resolve().layer_map.slot_names == resolve_target("default").layer_map.slot_names
    assert allocator_for(spec).layer_map.slot_names == resolve_target("default").layer_map.slot_names


def _positional(fn) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [n for n, p in inspect.signature(fn).parameters.items() if p.kind in kinds and n != "self"]


def test_long_signatures_take_keywords_after_the_first_few():
    import emq
    from emq.allocation import Allocator, allocator_for
    from emq.pipeline_demo import demo
    from emq.transfer import TransferStudy

    for fn in (allocator_for, Allocator.finish, TransferStudy.__init__, demo, emq.allocate, emq.sweep, emq.quantize):
        assert len(_positional(fn)) <= 4, fn.__qualname__
    assert _positional(emq.stats) == ["model", "data"]


# records and settings a user reads rather than builds by hand (dataclass fields in their documented order)
_RECORDS = {"Bench", "PTQSettings", "StatsSettings", "SearchResult"}


def test_every_public_function_with_many_parameters_takes_keywords_after_the_first_few():
    """Total over emq.api: a function or class of more than four parameters takes at most four positionally,
    so a call of more than four arguments names them."""
    import emq.api as api

    long = []
    for name in api.__all__:
        obj = getattr(api, name)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        if name in _RECORDS or not callable(fn):
            continue
        try:
            params = [n for n in inspect.signature(fn).parameters if n != "self"]
        except (TypeError, ValueError):  # a builtin or C type
            continue
        if len(params) > 4 and len(_positional(fn)) > 4:
            long.append(name)
    assert not long
