"""The README's headline picture says what the stored study says: its better / tie / worse marks are
the study's own per-bench counts, and it is drawn from the stored file without measuring anything."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks/results/transfer_loo.json"


def _script():
    spec = importlib.util.spec_from_file_location("_plot_headline", ROOT / "benchmarks/plot_headline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_marks_match_the_study_counts():
    plot, study = _script(), json.loads(STUDY.read_text(encoding="utf-8"))
    marks = Counter((c["test"], plot._outcome(c)) for c in study["cells"] if c["protocol"] == "leave-one-out")
    for row in study["summary"]:
        assert marks[row["test"], "better"] == row["seeds_better"], row["test"]
        assert marks[row["test"], "worse"] == row["seeds_worse"], row["test"]
    assert sum(marks.values()) == sum(row["seeds"] for row in study["summary"])  # every cell drawn once


def test_draws_a_png(tmp_path):
    out = tmp_path / "img" / "headline.png"
    _script().draw(json.loads(STUDY.read_text(encoding="utf-8")), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p != out]  # atomic: no temp file left behind
