"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..api import (
    DEVICES,
    EMBEDDED_MODELS,
    PRESETS,
    QUANTIZERS,
    Bench,
    EmqError,
    Executor,
    ModelSpec,
    ParameterError,
    PTQSettings,
    executor_classes,
    make_executor,
    markdown_table,
    os_reason,
    parse_config,
    resolve_device,
)

__all__ = [
    "add_device_arg",
    "add_executor_args",
    "add_model_args",
    "add_ptq_args",
    "add_space_arg",
    "check_bench_for_search",
    "check_out_dir",
    "check_executor_args",
    "make_out_dir",
    "emit_json",
    "executor_from_args",
    "markdown_table",
    "open_bench",
    "parse_bits",
    "ptq_overrides",
    "ptq_settings",
]

MIN_SPLIT = 3  # configurations a bench split needs for a rank correlation


def add_model_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument(
        "--model",
        default="default",
        help=f"an embedded model ({', '.join(EMBEDDED_MODELS)}) or a torchvision classifier name (default: default)",
    )
    p.add_argument("--weights", type=Path, help="local weights file (state dict), loaded with weights_only=True")
    p.add_argument("--num-classes", type=int, help="number of classes of a torchvision model (default: the data's)")
    p.add_argument(
        "--input-size", type=int, help="input resolution (default: the data's; 224 for torchvision models without data)"
    )
    if data:
        p.add_argument(
            "--data",
            help="'default', 'fashion-mnist' / 'mnist' (idx files found on disk, e.g. Debian's "
            "dataset-fashion-mnist), NAME:DIR, a directory of idx files, an ImageFolder or a CIFAR-10 directory "
            "(default: an embedded model's own)",
        )


def model_spec(args: argparse.Namespace, model: Any = None) -> ModelSpec:
    """The model and its data that the flags of `add_model_args` name (`model` overrides --model)."""
    return ModelSpec(
        model if model is not None else args.model,
        data=getattr(args, "data", None),
        weights=args.weights,
        num_classes=args.num_classes,
        input_size=args.input_size,
    )


# PTQ flag -> PTQSettings field. The flags default to None so that `ptq_overrides` can tell
# what the user typed (a bench's settings may only be repeated, not contradicted).
PTQ_FLAGS = {
    "act_bits": "act_bits",
    "bn": "bn",
    "symmetric": "weight_symmetric",
    "calib_size": "calib_size",
    "calib_seed": "calib_seed",
    "weight_quantizer": "weight_quantizer",
    "quantizer_option": "quantizer_options",
    "bias_correction": "bias_correction",
}


def add_ptq_args(p: argparse.ArgumentParser) -> None:
    d = PTQSettings()
    p.add_argument("--act-bits", type=int, help=f"activation bit-width (default {d.act_bits}; 32 = unquantized)")
    p.add_argument(
        "--bn", choices=["reestimate", "fold", "none"], help=f"BatchNorm handling (default: {d.bn} on calibration data)"
    )
    p.add_argument(
        "--symmetric", action="store_true", default=None, help="symmetric weight quantization (default: asymmetric)"
    )
    p.add_argument("--calib-size", type=int, help=f"calibration images (default {d.calib_size})")
    p.add_argument("--calib-seed", type=int, help=f"seed of the calibration draw (default {d.calib_seed})")
    p.add_argument(
        "--weight-quantizer",
        help=f"weight rounding method: {', '.join(QUANTIZERS)} (default {d.weight_quantizer}); gptq/adaround "
        "reconstruct each layer and are cached per (layer, bits)",
    )
    p.add_argument(
        "--bias-correction",
        action="store_true",
        default=None,
        help="correct each layer's bias for the mean output shift of its rounded weights (matters for layers "
        "without a following BatchNorm)",
    )
    p.add_argument(
        "--quantizer-option",
        action="append",
        type=_option,
        metavar="KEY=VALUE",
        help="an option of the weight quantizer, e.g. iters=20000 for adaround; repeatable (options and defaults: "
        + "; ".join(
            f"{name}: {', '.join(f'{o.name}={o.default}' for o in cls.options)}"
            for name, cls in QUANTIZERS.items()
            if cls.options
        )
        + ")",
    )


def add_executor_args(p: argparse.ArgumentParser, workers_help: str) -> None:
    """--workers, --executor and one flag per option of each executor (e.g. Ray's --ray-address and
    --gpus-per-worker): where the expensive part runs."""
    p.add_argument("--workers", type=int, default=1, help=workers_help)
    executors = executor_classes()
    shown = [f"{name} ({cls.description})" if cls.description else name for name, cls in executors.items()]
    p.add_argument(
        "--executor",
        choices=list(executors),
        help=f"{', '.join(shown[:-1])} or {shown[-1]}; default serial for one worker, else process",
    )
    for cls in executors.values():
        for opt in cls.options:
            p.add_argument(opt.cli_flag, dest=opt.dest, type=opt.type, help=opt.help)


def _executor_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Executor name -> {option name: value} of the option flags the user gave."""
    return {
        name: {o.name: getattr(args, o.dest) for o in cls.options if getattr(args, o.dest, None) is not None}
        for name, cls in executor_classes().items()
    }


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The executor the flags of `add_executor_args` ask for (the caller closes it)."""
    check_executor_args(args)
    return make_executor(args.executor, args.workers, **_executor_options(args).get(args.executor or "", {}))


def check_executor_args(args: argparse.Namespace) -> None:
    """Refuse contradictory executor flags before any bench, model or cluster work."""
    if args.workers < 1:
        raise EmqError(f"--workers {args.workers}: use 1 or more")
    classes = executor_classes()
    for name, given in _executor_options(args).items():
        opts = {o.name: o for o in classes[name].options}
        if given and args.executor != name:
            raise EmqError(f"{', '.join(opts[k].cli_flag for k in given)}: only with --executor {name}")
        for key, value in given.items():
            low = opts[key].minimum
            if low is not None and not (math.isfinite(value) and value >= low):
                raise EmqError(f"{opts[key].cli_flag} {value}: use a number >= {low:g}")
        if args.executor == name:
            classes[name].check_options(given, getattr(args, "device", None))


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: use KEY=VALUE, e.g. iters=20000")
    return key.strip(), value.strip()


def ptq_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The PTQSettings fields the user set with flags (nothing for flags left out)."""
    return {
        field: (dict(v) if field == "quantizer_options" else v)
        for dest, field in PTQ_FLAGS.items()
        if (v := getattr(args, dest, None)) is not None
    }


def ptq_settings(args: argparse.Namespace) -> PTQSettings:
    """The PTQ settings of the flags added by `add_ptq_args` (PTQSettings' defaults for the rest)."""
    return PTQSettings(**ptq_overrides(args))


def add_space_arg(p: argparse.ArgumentParser, whose: str = "") -> None:
    """`--space`: the search-space preset of the campaigns a command runs (one declaration)."""
    p.add_argument(
        "--space",
        choices=sorted(PRESETS),
        default="full",
        help=f"{whose}search-space preset (default full; 'measured' adds the measured per-layer sensitivity "
        "MKL, MDL, MNSR and, in context, MKLM, and seeds layer-kl, layer-loss, layer-sqnr and layer-kl-mid)",
    )


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """`--device` (a torch.device in `args.device`), checked as the arguments are parsed, so a
    device that does not exist here is refused before any file is written."""
    p.add_argument("--device", type=_device, default="cpu", help=f"where the network runs: {DEVICES} (default cpu)")


def _device(text: str) -> torch.device:
    try:
        return resolve_device(text)
    except ParameterError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e.problem}") from e


def parse_bits(text: str, param: str = "bits") -> list[int]:
    """Comma-separated bit-widths from a flag's text (`param` names the flag in errors)."""
    return list(parse_config(text, param))


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def shown(path: Path | str, keep: int = 60) -> str:
    """A path for a one-line message: a very long one keeps its two ends."""
    text = str(path)
    return text if len(text) <= 2 * keep + 3 else f"{text[:keep]}...{text[-keep:]}"


def _check_path_length(path: Path, flag: str) -> None:
    """Refuse a path the file system cannot hold (a name or the whole path too long) before any
    work, rather than when the first file is written."""
    anchor = next((p for p in (path, *path.parents) if os.path.exists(p)), Path("."))  # False on any OSError
    try:
        name_max, path_max = os.pathconf(anchor, "PC_NAME_MAX"), os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise EmqError(
                f"{flag} {shown(path)}: the name {shown(part, 20)} is {len(os.fsencode(part))} bytes long, and "
                f"this file system allows {name_max}; give a shorter name"
            )
    length = len(os.fsencode(os.path.abspath(path)))
    if length >= path_max:
        raise EmqError(
            f"{flag} {shown(path)}: the path is {length} bytes long, and this system allows {path_max - 1}; give a "
            "shorter path"
        )


def check_out_dir(path: Path | None, flag: str = "--out") -> None:
    """Refuse, before any work, a directory to write into that cannot be one: an existing
    file, a path below an existing file, or a path too long for the file system."""
    if path is None:
        return
    _check_path_length(path, flag)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"is below {p}, which is a file"
                raise EmqError(f"{flag} {path}: {where}; give a directory")
            return


def make_out_dir(path: Path, flag: str = "--out") -> None:
    """Create the output directory now, so a place that cannot hold it (read-only, not a real
    file system) is refused naming the flag before anything is written."""
    check_out_dir(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmqError(
            f"{flag} {shown(path)}: cannot create this directory ({os_reason(e)}); give a writable one"
        ) from e


def open_bench(spec: str, flag: str = "--bench") -> Any:
    """Open a bench for a command, naming the file when it is not a bench (an empty or
    foreign SQLite file), before any model work."""
    try:
        return Bench.open(spec)
    except EmqError as e:
        own = f"bench {spec}: "
        if str(e).startswith(own):  # the library names the file; the command names its flag
            raise EmqError(f"{flag} {spec}: {str(e)[len(own) :]}") from e
        if str(spec) in str(e):
            raise
        raise EmqError(f"{flag} {spec}: {e}") from e


def check_bench_for_search(bench: Any, spec: str, model: str | None, model_is_fixed: bool = False) -> str:
    """The model to evolve or score proxies for on `bench` (the bench's own unless `model`
    is given, which must then be the bench's), refused at once when the bench's splits are
    too small to rank: both would otherwise fail only after the statistics were computed."""
    built_for = str(bench.meta.get("model", "default"))
    if model is not None and model != built_for and model_is_fixed:
        raise EmqError(
            f"--bench {spec}: was built for model {built_for}, and this command runs on model {model}; give a "
            f"bench of {model}"
        )
    if model is not None and model != built_for:
        raise EmqError(
            f"--model {model}: bench {spec} was built for model {built_for}; leave --model out to use the bench's "
            f"model, or give a bench built for {model}"
        )
    for split in ("search", "heldout"):
        n = int(bench.mask(split).sum())
        if n < MIN_SPLIT:
            raise EmqError(
                f"--bench {spec}: its {split} split has {n} configuration(s) of {len(bench)}; a rank correlation "
                f"needs at least {MIN_SPLIT} (one configuration in five is held out): build a larger bench"
            )
    return built_for


def comma_list(text: str, flag: str) -> list[str]:
    """The non-empty comma-separated items of a flag's value; EmqError naming the flag if none."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise EmqError(f"{flag} {text!r}: give comma-separated values")
    return items
