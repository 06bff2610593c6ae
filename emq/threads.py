"""How many intra-op threads torch runs: the cores this process may use that other work leaves free.

torch starts one intra-op thread per core. Beside other CPU-bound work those threads wait at
every parallel region for a sibling the scheduler has put aside, spinning meanwhile: the CPU
time of a command grew 4x beside two busy processes on 2 cores. So emq picks the thread count
from the cores it may run on (`os.sched_getaffinity`, a cgroup CPU quota) minus the work
already running on them (the busy share of the machine's CPUs measured since `CpuSample()`,
and the 1-minute load average, whichever leaves fewer), at least 1. `--threads N` on the CLI,
`threads=N` in the API, override it. Worker processes (process and Ray executors) run one
thread each, on the one core they are given.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

_MIN_SAMPLE_SECONDS = 0.1  # a shorter window is topped up by sleeping (the counters tick at 100 Hz)


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup (v2) CPU quota."""
    cpus = _affinity()
    cores = len(cpus) if cpus else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_counters() -> tuple[float, float, int] | None:
    """(busy, total) CPU ticks summed over the CPUs this process may run on (/proc/stat), and
    how many CPUs that is; None where it is unreadable."""
    cpus = _affinity()
    busy = total = 0.0
    counted = 0
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, *fields = line.split()
                if not (name.startswith("cpu") and name[3:].isdigit()):
                    continue
                if cpus is not None and int(name[3:]) not in cpus:
                    continue
                values = [float(v) for v in fields[:8]]
                idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
                busy += sum(values) - idle
                total += sum(values)
                counted += 1
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total, counted) if counted else None


def _own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class CpuSample:
    """A start point for measuring how busy our CPUs are (take it early: the import of torch
    that follows is the measuring window, at no extra cost)."""

    wall: float = field(default_factory=time.monotonic)
    counters: tuple[float, float, int] | None = field(default_factory=lambda: _cpu_counters())
    own: float = field(default_factory=lambda: _own_cpu_seconds())

    def busy_cores(self) -> float | None:
        """Of the CPUs we may run on, how many other processes kept busy since the sample, or None."""
        left = _MIN_SAMPLE_SECONDS - (time.monotonic() - self.wall)
        if left > 0:
            time.sleep(left)
        now = _cpu_counters()
        if self.counters is None or now is None or now[1] <= self.counters[1] or now[2] != self.counters[2]:
            return None
        share = (now[0] - self.counters[0]) / (now[1] - self.counters[1])
        seconds = time.monotonic() - self.wall
        own = (_own_cpu_seconds() - self.own) / seconds if seconds > 0 else 0.0
        return max(0.0, share * now[2] - own)


def auto_threads(since: CpuSample | None = None) -> int:
    """Intra-op threads for this process: its usable cores minus the busy ones (the busier of
    the measured share and the load average scaled to our CPUs), at least 1."""
    cores = usable_cores()
    busy = []
    if hasattr(os, "getloadavg"):
        busy.append(os.getloadavg()[0] * cores / (os.cpu_count() or cores))
    measured = (since or CpuSample()).busy_cores()
    if measured is not None:
        busy.append(measured)
    free = cores - max(busy, default=0.0)
    return int(min(cores, max(1, math.floor(free + 0.5))))


def check_threads(threads: object, name: str = "threads") -> int | None:
    """None (automatic) or an integer >= 1."""
    if threads is None:
        return None
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        from .specs import ParameterError  # not at import: `emq --help` measures busy cores without numpy

        raise ParameterError(name, threads, "use a whole number of threads >= 1 (leave it out to choose automatically)")
    return threads


def set_threads(threads: int | None = None, since: CpuSample | None = None) -> int:
    """Set torch's intra-op threads to `threads`, or to `auto_threads(since)` when None; returns the count.

    Where torch is not imported yet, OMP_NUM_THREADS (read when it loads) is set instead."""
    n = check_threads(threads) or auto_threads(since)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = str(n)
    log.info("torch intra-op threads: %d (%s; %d usable cores)", n, "given" if threads else "automatic", usable_cores())
    return n


def cap_native_pools(threads: int) -> threadpool_limits:
    """Cap numpy's BLAS pool (OpenBLAS) at `threads` until the returned controller's
    `restore_original_limits()`; torch's own pool is `set_num_threads`'s, and left alone here.

    An idle OpenBLAS thread spins for a while after every call: a whole four-network campaign (`python`
    with the fit) used 36 CPU-s in 27 s of wall time, 25 CPU-s with one BLAS thread, and in a pool of
    worker processes the spinning took the cores the workers were given (benchmarks/search_speed.py, the
    same campaign on two workers: 696 candidates/s, 811 with the cap)."""
    from threadpoolctl import threadpool_limits  # not at import: `emq --help` loads no native pools

    return threadpool_limits(limits=threads, user_api="blas")


@contextmanager
def threads_restored() -> Iterator[None]:
    """Give torch's intra-op thread count (or OMP_NUM_THREADS before torch loads) back after the block."""
    env = os.environ.get("OMP_NUM_THREADS")
    before = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    try:
        yield
    finally:
        if before is not None:
            sys.modules["torch"].set_num_threads(before)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


@contextmanager
def torch_threads(threads: int | None = None) -> Iterator[int]:
    """Run a block with `set_threads(threads)`, the caller's count given back afterwards (the API's `threads=`)."""
    with threads_restored():
        yield set_threads(threads)


__all__ = [
    "CpuSample",
    "auto_threads",
    "cap_native_pools",
    "check_threads",
    "set_threads",
    "threads_restored",
    "torch_threads",
    "usable_cores",
]
