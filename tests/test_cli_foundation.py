import json
import subprocess
import sys

import pytest

from emq.cli.main import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_layers_resnet18_json(capsys):
    code, out, _ = run_cli(capsys, "layers", "--model", "resnet18", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["model"] == "resnet18" and len(doc["slots"]) == 18
    assert doc["slots"][0]["params"] == 9408
    assert doc["slots"][-1]["params"] == 512000 and doc["slots"][-1]["bias"] == 1000
    assert doc["fp_size_bytes"] > 0


def test_layers_table(capsys):
    code, out, _ = run_cli(capsys, "layers")
    assert code == 0 and "layer1.0.conv1" in out and "20 slots" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["quantize", "--bits", "4,4"], "20 slots"),
        (["quantize", "--bits", ",".join(["9"] * 20)], "outside 1..8"),
        (["quantize", "--bits", ",".join(["0"] * 20)], "outside 1..8"),
        (["quantize", "--bits", "a,b"], "comma-separated integers"),
        (["quantize"], "--bits"),
        (["layers", "--model", "resnet1800"], "unknown model"),
        (["quantize", "--model", "resnet18", "--bits", ",".join(["4"] * 18)], "--data"),
        (["quantize", "--data", "/nonexistent/dir", "--bits", ",".join(["4"] * 20)], "no such directory"),
        (["quantize", "--bits", ",".join(["4"] * 20), "--calib-size", "0"], "--calib-size 0: must be an integer >= 1"),
        (["layers", "--input-size=-3"], "--input-size -3: must be an integer >= 1"),
        (
            ["layers", "--input-size", "0"],
            "--input-size 0: must be an integer >= 1",
        ),  # used to fall back to 24 px silently
    ],
)
def test_bad_input_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert out == ""


def test_quantize_json_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "emq.cli.main", "quantize", "--bits", ",".join(["4"] * 20), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"top1", "loss", "kl", "size_bytes", "bitops"}
    assert 10 < doc["top1"] <= 100 and doc["kl"] > 0
