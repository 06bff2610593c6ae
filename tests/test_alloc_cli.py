"""`emq allocate` end to end on the default model, and `emq quantize --bitmap`."""

import csv
import json

import pytest
from helpers import NoiseProxy, OutputErrorProxy

from emq.allocation import load_bitmap
from emq.api import layers
from emq.baselines.registry import PROXIES
from emq.cli.main import main


@pytest.fixture(autouse=True)
def registry():
    """Two cheap real test proxies registered next to the hand-made ones, resolved by name."""
    with PROXIES.temporarily("test-noise", NoiseProxy), PROXIES.temporarily("test-output-error", OutputErrorProxy):
        yield


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_allocate_evaluate_then_quantize_the_bitmap(tmp_path, capsys):
    rc, out, _ = run(
        capsys,
        "allocate",
        "--proxy",
        "test-noise",
        "--budget-avg-bits",
        "3.0",
        "--budget-size",
        "40KB",
        "--pin",
        "conv1=8",
        "--pin",
        "fc=8",
        "--evaluate",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert rc == 0
    doc = json.loads(out)  # stdout is exactly one JSON object
    lm = layers("default")
    assert doc["bits"][0] == 8 and doc["bits"][-1] == 8 and set(doc["bits"][1:-1]) <= {2, 3, 4}
    assert doc["avg_bits"] <= 3.0 and doc["size_bytes"] <= 40_000 and doc["size_bytes"] == lm.size_bytes(doc["bits"])
    assert doc["solve_seconds"] > 0 and doc["method"] == "ilp" and 0 <= doc["top1"] <= 100
    assert load_bitmap(tmp_path / "bitmap.json", lm) == tuple(doc["bits"])
    rc, out, _ = run(capsys, "quantize", "--bitmap", str(tmp_path / "bitmap.json"), "--json")
    assert rc == 0 and json.loads(out)["top1"] == pytest.approx(doc["top1"])


def test_infeasible_budget_exits_2_and_writes_nothing(tmp_path, capsys):
    rc, out, err = run(
        capsys,
        "allocate",
        "--proxy",
        "test-noise",
        "--budget-size",
        "10KB",
        "--pin",
        "fc=8",
        "--out",
        str(tmp_path / "o"),
    )
    assert rc == 2 and out == ""
    assert "smallest feasible value" in err and "fc=8" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget-size", "1.5XB"], "--budget-size"),
        (["--budget-avg-bits", "3", "--pin", "conv9=4"], "conv9"),
        (["--budget-avg-bits", "3", "--pin", "conv1=x"], "integer"),
        (["--sweep", "2:3:2"], "--out"),
        ([], "at least one budget"),
    ],
)
def test_bad_arguments(capsys, argv, message):
    rc, _, err = run(capsys, "allocate", "--proxy", "test-noise", *argv)
    assert rc == 2 and message in err


def test_sweep_writes_csv_and_png(tmp_path, capsys):
    rc, out, _ = run(
        capsys,
        "allocate",
        "--proxy",
        "test-noise",
        "--sweep",
        "1.5:3.5:3",
        "--baseline",
        "test-output-error",
        "--search-evals",
        "6",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert rc == 0
    doc = json.loads(out)
    assert len(doc["skipped"]) == 2  # 1.5 average bits is below all-2, for both proxies
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    series = {r["series"] for r in rows}
    assert {"test-noise", "test-output-error", "uniform-2", "uniform-3", "uniform-4"} <= series
    for r in rows:
        if r["method"] != "uniform":
            assert float(r["avg_bits"]) <= float(r["budget"]) + 1e-9
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
