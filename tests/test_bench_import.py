"""Import of MQ-Bench-101 data: round trips, malformed files, and a malicious pickle."""

import json
import os
import pickle

import numpy as np
import pytest

from emq.bench import Bench, bench_import
from emq.cli.main import main
from emq.errors import EmqError


def _entries(n=12, seed=0):
    rng = np.random.default_rng(seed)
    cfgs = {tuple(int(b) for b in rng.integers(2, 5, 18)) for _ in range(3 * n)}
    return {
        i: {"bit_cfg": str(list(c)), "acc": round(float(60 + 10 * rng.random()), 3)}
        for i, c in enumerate(sorted(cfgs)[:n])
    }


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_round_trip(tmp_path):
    data = _entries()
    src = tmp_path / "mq.pkl"
    src.write_bytes(pickle.dumps(data))
    info = bench_import(src, "mqbench101-pickle", tmp_path / "mq.sqlite")
    assert info["records"] == 12 and len(info["slots"]) == 18 and info["allowed_bits"] == [2, 3, 4]
    b = Bench.open(tmp_path / "mq.sqlite")
    assert len(b) == 12
    for entry in data.values():
        assert b.query_by_cfg(entry["bit_cfg"]) == pytest.approx(entry["acc"])
        assert b.fix_bit_cfg(b.get_idx_by_cfg(entry["bit_cfg"])) == entry["bit_cfg"]
    assert dict(iter(b)) == {i: e for i, e in enumerate(data.values())}
    # size and BitOps come from resnet18's layer map: monotone in the bits
    cfgs, m = b.arrays(metrics=["size_bytes", "bitops"])
    assert np.all(np.isfinite(m["size_bytes"])) and np.corrcoef(cfgs.sum(1), m["bitops"])[0, 1] > 0


def test_text_round_trip_via_cli(tmp_path, capsys):
    data = _entries(8, seed=1)
    src = tmp_path / "mq.txt"
    src.write_text("# MQ-Bench-101\n" + "".join(f"{e['bit_cfg']}:{e['acc']}\n" for e in data.values()) + "\n")
    rc = main(
        [
            "bench",
            "import",
            str(src),
            "--format",
            "mqbench101-text",
            "--model",
            "resnet18",
            "--out",
            str(tmp_path / "t.sqlite"),
            "--json",
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["records"] == 8
    b = Bench.open(tmp_path / "t.sqlite")
    assert [b.query_by_idx(i) for i in range(len(b))] == pytest.approx([e["acc"] for e in data.values()])
    assert np.isnan(b.metrics["loss"]).all()


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d[3].update(bit_cfg=str([4] * 17)), "17 bit-widths, but the model has 18 slots"),
        (lambda d: d[5].update(bit_cfg=str([4] * 17 + [5])), "slot 17 \\(fc\\) has 5 bits"),
        (lambda d: d[2].update(acc="high"), "accuracy 'high' is not a number"),
        (lambda d: d[2].update(acc=float("nan")), "not a percentage"),
        (lambda d: d.__setitem__(1, {"bit_cfg": d[0]["bit_cfg"], "acc": 1.0}), "repeats entry 0"),
        (lambda d: d.__setitem__(4, [1, 2]), "entry 4 must be a dict"),
    ],
)
def test_malformed_pickle_is_refused_and_nothing_written(tmp_path, mutate, message):
    data = _entries()
    mutate(data)
    src = tmp_path / "bad.pkl"
    src.write_bytes(pickle.dumps(data))
    out = tmp_path / "out.sqlite"
    with pytest.raises(EmqError, match=message):
        bench_import(src, "mqbench101-pickle", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pkl"]


def test_truncated_files_are_refused(tmp_path):
    raw = pickle.dumps(_entries())
    src = tmp_path / "cut.pkl"
    src.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(EmqError, match="not a readable MQ-Bench-101 pickle"):
        bench_import(src, "mqbench101-pickle", tmp_path / "o.sqlite")
    lines = "".join(f"{e['bit_cfg']}:{e['acc']}\n" for e in _entries().values())
    txt = tmp_path / "cut.txt"
    txt.write_text(lines[: len(lines) - 40])
    with pytest.raises(EmqError, match="cut.txt, line 12"):
        bench_import(txt, "mqbench101-text", tmp_path / "o.sqlite")
    assert not (tmp_path / "o.sqlite").exists()


def test_malicious_pickle_is_refused_without_executing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps({0: {"bit_cfg": str([4] * 18), "acc": _Evil()}}))
    with pytest.raises(EmqError, match="refused to load (posix|os|nt).system"):
        bench_import(src, "mqbench101-pickle", tmp_path / "o.sqlite")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    assert not (tmp_path / "o.sqlite").exists()
    # via the CLI: exit code 2, nothing written
    assert (
        main(["bench", "import", str(src), "--format", "mqbench101-pickle", "--out", str(tmp_path / "o.sqlite")]) == 2
    )
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_existing_output_is_not_overwritten(tmp_path):
    src = tmp_path / "mq.pkl"
    src.write_bytes(pickle.dumps(_entries(3)))
    out = tmp_path / "exists.sqlite"
    out.write_text("keep me")
    with pytest.raises(EmqError, match="the file exists"):
        bench_import(src, "mqbench101-pickle", out)
    assert out.read_text() == "keep me"


def test_import_records_mqbench101_provenance_and_completeness(tmp_path, caplog):
    src = tmp_path / "mq.pkl"
    src.write_bytes(pickle.dumps(_entries(425, seed=1)))
    full = bench_import(src, "mqbench101-pickle", tmp_path / "full.sqlite")
    prov = full["provenance"]
    assert full["records"] == 425 and prov["complete"] and prov["configurations"] == 425
    assert (
        prov["ptq"]["method"].startswith("AdaRound")
        and prov["ptq"]["iterations"] == 20000
        and prov["ptq"]["calibration_images"] == 1024
    )
    assert "ResNet-18" in prov["network"] and "ImageNet" in prov["data"]
    src.write_bytes(pickle.dumps(_entries(12)))
    part = bench_import(src, "mqbench101-pickle", tmp_path / "part.sqlite")
    assert not part["provenance"]["complete"] and "425" in caplog.text
