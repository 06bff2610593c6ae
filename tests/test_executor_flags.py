"""Executor choice from the command line and the local executors' failure records (no Ray
needed: these run everywhere)."""

import sys

import pytest

from emq.cli.main import main
from emq.executors import TaskFailure, make_executor

CLI = ["--configs", "8", "--seed", "1", "--noise-samples", "4", "--calib-size", "128", "--test-limit", "300"]


def _fails_on_two(ctx, t):
    if t == 2:
        raise ValueError("two is bad")
    return t + ctx


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_local_executors_return_failures_when_asked(executor):
    with make_executor(executor, workers=1 if executor == "serial" else 2) as ex:
        assert list(ex.map(_fails_on_two, range(4), context=10, failures=True)) == [
            10,
            11,
            TaskFailure(2, "ValueError: two is bad", 1),
            13,
        ]
        with pytest.raises(ValueError, match="two is bad"):
            list(ex.map(_fails_on_two, range(4), context=10))


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--ray-address", "auto"], "--ray-address"),
        (["--gpus-per-worker", "1"], "--gpus-per-worker"),
        (["--executor", "ray", "--gpus-per-worker", "-1"], "--gpus-per-worker"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_bad_executor_flags_are_refused_before_any_file(tmp_path, capsys, flags, named):
    out = tmp_path / "b.sqlite"
    assert main(["bench", "build", "--out", str(out), *CLI, *flags]) == 2
    assert named in capsys.readouterr().err and not out.exists()


def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where the extra is not installed
    for cmd in (
        ["bench", "build", "--out", str(tmp_path / "b.sqlite"), *CLI],
        ["score", "--bench", "default", "--proxies", "kl"],
    ):
        assert main([*cmd, "--executor", "ray"]) == 2
        assert 'pip install "emq[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "b.sqlite").exists()


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--device", "cuda"], "--gpus-per-worker"),  # a Ray worker sees only the GPUs it reserved
        (["--device", "cuda:1", "--gpus-per-worker", "1"], "--device cuda"),  # and numbers them from 0
    ],
)
def test_cuda_with_ray_needs_reserved_gpus(tmp_path, capsys, monkeypatch, flags, named):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    out = tmp_path / "b.sqlite"
    assert main(["bench", "build", "--out", str(out), *CLI, "--executor", "ray", *flags]) == 2
    assert named in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    "cmd",
    [
        ["search", "--bench", "default"],
        ["transfer", "--benches", "default,vgg-digits"],
        ["score", "--bench", "default"],
    ],
)
def test_every_command_refuses_ray_flags_without_ray(tmp_path, capsys, cmd):
    extra = ["--out", str(tmp_path / "o")] if cmd[0] != "score" else []
    assert main([*cmd, *extra, "--ray-address", "auto"]) == 2
    assert "--ray-address" in capsys.readouterr().err and not (tmp_path / "o").exists()
