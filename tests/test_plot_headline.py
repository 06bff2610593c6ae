"""The README's headline picture says what the stored study says: its better / tie / worse marks are
the study's own per-bench counts, and it is drawn from the stored file without measuring anything."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = [ROOT / "benchmarks/results/transfer_loo.json", ROOT / "benchmarks/results/transfer_zoo.json"]


def _script():
    spec = importlib.util.spec_from_file_location("_plot_headline", ROOT / "benchmarks/plot_headline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_marks_match_the_study_counts(path):
    plot, study = _script(), json.loads(path.read_text(encoding="utf-8"))
    marks = Counter((c["test"], plot._outcome(c)) for c in study["cells"] if c["protocol"] == "leave-one-out")
    rows = [r for r in study["summary"] if r.get("protocol", "leave-one-out") == "leave-one-out"]
    for row in rows:
        assert marks[row["test"], "better"] == row["seeds_better"], row["test"]
        assert marks[row["test"], "worse"] == row["seeds_worse"], row["test"]
    assert sum(marks.values()) == sum(row["seeds"] for row in rows)  # every cell drawn once


def test_draws_a_png(tmp_path):
    out = tmp_path / "img" / "headline.png"
    _script().draw(json.loads(STUDIES[1].read_text(encoding="utf-8")), out, also=("layer-kl",))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p != out]  # atomic: no temp file left behind
