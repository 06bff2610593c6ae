"""Kill -9 a campaign at random moments and resume it: is the result the uninterrupted one?

Runs one uninterrupted `emq search` (its own process), then `--trials` campaigns that are
each killed with SIGKILL at random moments (`--kills` times, the moment drawn uniformly over
the first 80 % of the reference run's duration) and resumed with `--resume` until they finish. A trial is
identical when best_proxy.json, hall_of_fame.csv and log.jsonl (timing fields aside) equal
the reference's byte for byte. Prints the count and the kill moments. Heavy: about
(trials x (kills + 1)) campaign starts.

    python benchmarks/kill_resume.py --trials 20 --kills 2

    Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emq.evolution.runfiles import run_fingerprint


def _cmd(out: Path, args: argparse.Namespace, resume: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "emq.cli.main",
        "search",
        "--bench",
        args.bench,
        "--generations",
        str(args.generations),
        "--population",
        str(args.population),
        "--seed",
        str(args.seed),
        "--workers",
        str(args.workers),
        "--checkpoint-every",
        str(args.checkpoint_every),
        "--out",
        str(out),
        "--json",
    ]
    return cmd + (["--resume"] if resume else [])


def _run_with_kills(out: Path, args: argparse.Namespace, moments: list[float]) -> list[str]:
    """Start, kill at each moment (seconds after that start), resume; then run to the end."""
    events = []
    for i, moment in enumerate(moments):
        proc = subprocess.Popen(
            _cmd(out, args, resume=i > 0 and (out / "checkpoint.npz").exists()),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(timeout=moment)
            events.append(f"finished before the kill at {moment:.1f} s")
            return events
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            events.append(f"killed at {moment:.1f} s")
    resume = (out / "checkpoint.npz").exists()
    subprocess.run(_cmd(out, args, resume=resume), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return events


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default="default")
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--kills", type=int, default=2, help="kills per trial")
    p.add_argument("--rng", type=int, default=0, help="seed of the kill moments")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="emq-kill-"))
    rng = random.Random(args.rng)
    try:
        t0 = time.perf_counter()
        subprocess.run(_cmd(root / "reference", args, resume=False), check=True, stdout=subprocess.DEVNULL)
        duration = time.perf_counter() - t0
        ref = run_fingerprint(root / "reference")
        print(f"reference campaign: {duration:.1f} s (load average {os.getloadavg()[0]:.1f})")
        same = killed = 0
        for t in range(args.trials):
            out = root / f"trial{t}"
            events = _run_with_kills(out, args, [rng.uniform(1.0, 0.8 * duration) for _ in range(args.kills)])
            ok = run_fingerprint(out) == ref
            same += ok
            killed += any(e.startswith("killed") for e in events)
            print(f"trial {t + 1:2d}: {'identical' if ok else 'DIFFERENT'} ({'; '.join(events)})", flush=True)
        print(
            f"{same} of {args.trials} campaigns identical to the uninterrupted one; {killed} of them were killed "
            "at least once"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
