"""The CPU time of one emq command idle and beside CPU-bound processes (thread oversubscription).

Runs the command twice, each time with a fresh EMQ_CACHE_DIR: once as the machine is, once
beside `--busy` busy-loop processes this script starts and stops itself. CPU seconds are the
command's own (resource.getrusage(RUSAGE_CHILDREN) around it; the busy loops are reaped only
afterwards, so they are not counted). Prints wall and CPU seconds of both runs, the load average
before each, and the loaded / idle CPU ratio (target <= 1.5: fair sharing of the cores leaves
the CPU time unchanged and stretches the wall time). `--threads N` adds `--threads N` to the
command (e.g. the core count, to see torch's own default again).

Usage: python benchmarks/contention.py [--busy 2] [--threads N] [-- emq ARGS...]
       (default command: emq -q stats --model vgg-digits --no-cache)
Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_COMMAND = ["-q", "stats", "--model", "vgg-digits", "--no-cache"]


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(command: list[str], busy: int) -> dict:
    """Wall and CPU seconds of `command` with a fresh cache beside `busy` busy loops."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    cache = Path(tempfile.mkdtemp(prefix="emq-contention-"))
    try:
        if busy:
            time.sleep(2.0)  # let the loops reach the scheduler's steady state
        load = os.getloadavg()
        cpu0, t0 = _cpu_children(), time.perf_counter()
        done = subprocess.run(
            command,
            env={**os.environ, "EMQ_CACHE_DIR": str(cache)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    finally:
        for p in loops:
            p.terminate()
        for p in loops:
            p.wait()
        shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {done.returncode}: run it alone to see why")
    return {"busy": busy, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": [round(x, 2) for x in load]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the loaded run (default 2)")
    ap.add_argument("--threads", type=int, help="pass --threads N to the command")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("command", nargs="*", help="emq arguments after --")
    args = ap.parse_args()
    emq = [sys.executable, "-m", "emq.cli.main"]
    command = emq + (args.command or DEFAULT_COMMAND) + ([f"--threads={args.threads}"] if args.threads else [])
    idle = run_once(command, 0)
    loaded = run_once(command, args.busy)
    res = {
        "command": " ".join(["emq", *command[len(emq) :]]),
        "cores": len(os.sched_getaffinity(0)),
        "idle": idle,
        "loaded": loaded,
        "cpu_ratio": round(loaded["cpu_s"] / idle["cpu_s"], 2),
        "wall_ratio": round(loaded["wall_s"] / idle["wall_s"], 2),
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"command: {res['command']}  ({res['cores']} usable cores)")
    for name in ("idle", "loaded"):
        r = res[name]
        print(
            f"{name:>6}: {r['busy']} busy loops, wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
            f"load before {r['load_before'][0]:.2f} / {r['load_before'][1]:.2f} / {r['load_before'][2]:.2f}"
        )
    print(f"CPU time loaded / idle: {res['cpu_ratio']:.2f} (target <= 1.5); wall: {res['wall_ratio']:.2f}")


if __name__ == "__main__":
    main()
