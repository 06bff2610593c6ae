"""A new executor with one option, a new weight quantizer with one option, a new proxy, a new
budget kind and a new derived statistic (terminal) are each one file.

Each plugin below is written to a module of its own (as a user would write it) and imported;
nothing else is edited. The executor's option becomes a CLI flag, the quantizer's option is
listed by `--quantizer-option`, the proxy is scored and allocated with by name, the budget kind
becomes a `--budget-<name>` flag, the terminal is searched over with `--terminals`, and a real `emq`
command passes each to its plugin.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest

from emq.cli.main import main
from emq.errors import EmqError

EXECUTOR_PLUGIN = '''
"""Runs tasks in this process and records each one under a label (a test plugin)."""

from emq.executors import Executor, register, run_task
from emq.registry import Option

SEEN = []


@register("recording")
class RecordingExecutor(Executor):
    description = "in this process, recording each task"
    options = (
        Option("label", str, "plain", "with --executor recording: label of the recorded tasks", flag="--record-as"),
    )

    def __init__(self, workers: int = 1, label: str = "plain") -> None:
        self.workers, self.label = workers, label

    def map(self, fn, tasks, context=None, *, ordered=True, chunksize=1, failures=False):
        for task in tasks:
            SEEN.append(self.label)
            yield run_task(fn, context, task, failures)
'''

QUANTIZER_PLUGIN = '''
"""Rounds weights to multiples of a fixed step, whatever the bit-width (a test plugin)."""

import torch

from emq.quantizers import WeightQuantizer
from emq.registry import Option

STEPS = []


class StepRounding(WeightQuantizer):
    name = "toy-step"
    description = "rounding to multiples of `step`"
    options = (Option("step", float, 0.5, "the rounding grid's step"),)

    def quantize(self, weight, bits, symmetric=False, layer=None):
        STEPS.append(self.params["step"])
        return torch.round(weight / self.params["step"]) * self.params["step"]
'''


PROXY_PLUGIN = '''
"""Each slot's weight count times its bits (a test plugin): the model size without biases."""

import numpy as np

from emq.baselines.registry import register_proxy
from emq.proxy import SeparableProxy


@register_proxy
class WeightBits(SeparableProxy):
    name = "toy-weight-bits"
    description = "weights x bits per slot (a test plugin)"
    cost = "none"
    orientation = 1
    faithful = False  # not a published method: never "the best hand-made proxy"

    def table(self, ctx):
        return np.outer(ctx.target.layer_map.params, np.asarray(ctx.bits, dtype=np.float64))
'''

BUDGET_PLUGIN = '''
"""A budget in kilobits of weights (a test plugin)."""

from emq.allocation.kinds import BudgetKind, register_kind


@register_kind
class WeightKilobits(BudgetKind):
    name = "toy-kbits"
    help = "weight kilobits, e.g. 200 (a test plugin)"
    example = "200"

    def per_bit(self, lm, act_bits):
        return lm.params

    def to_units(self, value, lm, act_bits):
        return value * 1000.0

    def from_units(self, units, lm, act_bits):
        return units / 1000.0
'''

TERMINAL_PLUGIN = r'''
"""Gradient times weight, SNIP's saliency, as a derived statistic (a test plugin)."""

from emq.search_space.primitives import TerminalSpec, WeightT, register_terminal

register_terminal(
    TerminalSpec(
        "toy-gw",
        WeightT,
        bit_dependent=False,
        description="gradient times weight (a test plugin)",
        latex=r"G \odot W",
        default=False,
        derive=lambda t: t["G"] * t["W"],
        needs=("G", "W"),
        python="t['G'] * t['W']",
    )
)
'''


def _help(capsys, *command: str) -> str:
    """`emq COMMAND --help` as one line of text."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """Import `source` as a new module; its registrations are undone afterwards."""
    from emq.allocation.kinds import KINDS
    from emq.baselines.registry import PROXIES
    from emq.executors import EXECUTORS
    from emq.quantizers import QUANTIZERS
    from emq.search_space.primitives import TERMINALS

    monkeypatch.syspath_prepend(str(tmp_path))
    names = []

    def load(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return importlib.import_module(name)

    yield load
    EXECUTORS.remove("recording")
    QUANTIZERS.remove("toy-step")
    PROXIES.remove("toy-weight-bits")
    KINDS.remove("toy-kbits")
    TERMINALS.remove("toy-gw")
    for name in names:
        sys.modules.pop(name, None)


def test_an_executor_with_one_option_is_one_file(plugin, tmp_path, capsys):
    mod = plugin("emq_recording_executor", EXECUTOR_PLUGIN)
    help_text = _help(capsys, "bench", "build")
    assert "--record-as RECORD_AS" in help_text and "recording (in this process, recording each task)" in help_text
    out = tmp_path / "b.sqlite"
    build = ["bench", "build", "--out", str(out), "--configs", "6", "--noise-samples", "0", "--calib-size", "64"]
    build += ["--test-limit", "200", "--executor", "recording", "--record-as", "mine"]
    assert main(build) == 0, capsys.readouterr().err
    assert mod.SEEN and set(mod.SEEN) == {"mine"}  # every configuration ran through the plugin, with the option
    assert main(["bench", "build", "--out", str(tmp_path / "c.sqlite"), "--record-as", "x"]) == 2
    assert "--record-as: only with --executor recording" in capsys.readouterr().err


def test_a_quantizer_with_one_option_is_one_file(plugin, capsys):
    mod = plugin("emq_step_quantizer", QUANTIZER_PLUGIN)
    help_text = _help(capsys, "quantize")
    assert "toy-step: step=0.5" in help_text and "weight rounding method: mse, adaround, gptq, toy-step" in help_text
    bits = ",".join(["4"] * 20)
    args = ["quantize", "--bits", bits, "--calib-size", "64", "--weight-quantizer", "toy-step"]
    assert main([*args, "--quantizer-option", "step=0.25", "--json"]) == 0, capsys.readouterr().err
    assert set(mod.STEPS) == {0.25}  # the flag's value reached the plugin
    mod.STEPS.clear()
    assert main([*args, "--json"]) == 0
    assert set(mod.STEPS) == {0.5}  # and its default when the flag is left out
    capsys.readouterr()
    assert main([*args, "--quantizer-option", "steps=1"]) == 2
    assert "has no option 'steps' (its options: step)" in capsys.readouterr().err


def test_a_proxy_is_one_file(plugin, capsys):
    """The plugin ranks configurations exactly as the shipped `size` proxy (its table is size without
    the constant biases), and allocates by name."""
    plugin("emq_weight_bits_proxy", PROXY_PLUGIN)
    assert main(["score", "--bench", "default", "--proxies", "size,toy-weight-bits", "--json"]) == 0
    rows = {p["name"]: p for p in json.loads(capsys.readouterr().out)["proxies"]}
    cells = [k for k in rows["size"] if k.startswith("spearman_")]
    assert len(cells) >= 4 and all(rows["toy-weight-bits"][k] == pytest.approx(rows["size"][k]) for k in cells)
    assert main(["allocate", "--proxy", "toy-weight-bits", "--budget-avg-bits", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["avg_bits"] <= 3.0


def test_a_budget_kind_is_one_file(plugin, capsys):
    plugin("emq_kilobits_budget", BUDGET_PLUGIN)
    assert "--budget-toy-kbits BUDGET_TOY_KBITS weight kilobits" in _help(capsys, "allocate")
    assert main(["allocate", "--proxy", "fisher", "--budget-toy-kbits", "150", "--json"]) == 0
    alloc = json.loads(capsys.readouterr().out)
    assert alloc["avg_bits"] * 67_848 <= 150_000 < (alloc["avg_bits"] + 0.2) * 67_848  # the default: 67,848 weights
    assert main(["allocate", "--proxy", "fisher", "--budget-toy-kbits", "50"]) == 2  # below 2 bits everywhere
    assert "toy-kbits" in capsys.readouterr().err


def test_a_derived_statistic_is_one_file(plugin, tiny_setting, tmp_path, capsys):
    """The terminal's tables equal the same formula spelled with G and W, and a search uses it by name."""
    import torch

    from emq.search_space.evaluate import TableEvaluator
    from emq.search_space.pset import make_space

    plugin("emq_gw_terminal", TERMINAL_PLUGIN)
    space = make_space(terminals=("toy-gw", "G", "W", "E", "b"))
    tables = TableEvaluator(tiny_setting[0], space.terminals, space.prims)
    spelled = [("p", "l1_w"), ("p", "mul_w"), ("t", "G"), ("t", "W")]
    torch.testing.assert_close(tables.table([("p", "l1_w"), ("t", "toy-gw")]), tables.table(spelled), rtol=0, atol=0)
    out = tmp_path / "search"
    search = ["search", "--bench", "default", "--terminals", "toy-gw,E,b", "--generations", "1", "--population", "8"]
    assert main([*search, "--out", str(out), "--json"]) == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["space"]["terminals"] == ["toy-gw", "E", "b"]
    assert main([*search[:-4], "--generations", "1", "--terminals", "toy-gx,b", "--out", str(tmp_path / "x")]) == 2
    assert "terminal 'toy-gx' is unknown" in capsys.readouterr().err


def test_a_taken_name_is_refused_in_every_registry():
    from emq.allocation.kinds import SizeKind, register_kind
    from emq.baselines import register_proxy
    from emq.baselines.separable import HawqV1
    from emq.executors import Executor, executor_names, register
    from emq.quantizers import WeightQuantizer
    from emq.search_space.primitives import TERMINALS, _registry, register_terminal

    assert "serial" in executor_names()  # loads every executor module, as the CLI does
    with pytest.raises(EmqError, match="executor 'serial' is defined twice"):
        register("serial")(type("Other", (Executor,), {"map": lambda self, *a, **k: iter(())}))
    with pytest.raises(EmqError, match="weight quantizer 'mse' is defined twice"):
        type("OtherMse", (WeightQuantizer,), {"name": "mse", "quantize": lambda self, w, b, s=False, layer=None: w})
    with pytest.raises(EmqError, match="budget kind 'size' is defined twice"):
        register_kind(type("OtherSize", (SizeKind,), {}))
    with pytest.raises(EmqError, match="proxy 'hawq-v1' is defined twice"):
        register_proxy(type("OtherHawq", (HawqV1,), {}))
    with pytest.raises(EmqError, match="terminal 'W' is defined twice"):
        _registry([*TERMINALS.values(), TERMINALS["W"]])
    with pytest.raises(EmqError, match="terminal 'W' is defined twice"):
        register_terminal(TERMINALS["W"])


def test_registry_orders_and_names_unknown_entries():
    from emq.registry import Registry
    from emq.specs import ParameterError

    by_name, declared = Registry("thing", "things", order="name"), Registry("thing", "things")
    for n in ("b", "c", "a"):
        by_name.add(n, n.upper())
        declared.add(n, n.upper())
    assert list(by_name) == ["a", "b", "c"] and list(declared) == ["b", "c", "a"]
    with pytest.raises(ParameterError, match=r"things='d': unknown thing; use one of b, c, a"):
        declared.get_entry("d")


def test_a_registry_has_no_back_door_and_a_temporary_entry_goes_away():
    """Item assignment would skip the duplicate check; a temporary entry is checked like any other."""
    from emq.registry import Registry

    things = Registry("thing", "things")
    things.add("a", 1)
    with pytest.raises(TypeError):
        things["a"] = 2  # type: ignore[index]
    with pytest.raises(EmqError, match="thing 'a' is defined twice"), things.temporarily("a", 3):
        pass
    assert things["a"] == 1
    with things.temporarily("b", 4):
        assert dict(things) == {"a": 1, "b": 4}
    assert dict(things) == {"a": 1}


def test_a_module_in_search_space_derived_is_imported_with_the_primitives(tmp_path):
    """The folder's modules are imported when the primitives are: a terminal file dropped there is available
    by name with no other edit (here the folder gains a second directory before the import)."""
    import subprocess

    (tmp_path / "toy_gw.py").write_text(textwrap.dedent(TERMINAL_PLUGIN))
    code = (
        f"import emq.search_space.derived as d; d.__path__.append({str(tmp_path)!r}); "
        "from emq.search_space.primitives import TERMINALS; print('toy-gw' in TERMINALS)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
