"""A local pool of spawned worker processes.

Spawn, not fork: forking a process whose torch thread pools are running can deadlock. Each
worker runs one intra-op thread and one BLAS thread (numpy's OpenBLAS, `cap_native_pools`),
so W workers share the cores instead of oversubscribing them. The context is sent once per
worker (the pool's initializer); a new context restarts the pool, so a job that reuses one
context pays the start-up once.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import torch

from ..threads import cap_native_pools
from . import Context, Executor, Task, register, run_task

_CONTEXT: Any = None


def _init(context: Any) -> None:
    global _CONTEXT
    torch.set_num_threads(1)
    cap_native_pools(1)
    _CONTEXT = context


def _call(fn: Callable[[Context, Task], Any], failures: bool, task: Task) -> Any:
    return run_task(fn, _CONTEXT, task, failures)


@register("process")
class ProcessExecutor(Executor):
    description = "a local pool"

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._pool: Any = None
        self._context: Any = None

    def _pool_for(self, context: Any) -> Any:
        if self._pool is None or context is not self._context:
            self.close()
            self._pool = mp.get_context("spawn").Pool(self.workers, initializer=_init, initargs=(context,))
            self._context = context
        return self._pool

    def map(
        self,
        fn: Callable[[Context, Task], Any],
        tasks: Iterable[Task],
        context: Context = None,
        *,
        ordered: bool = True,
        chunksize: int = 1,
        failures: bool = False,
    ) -> Iterator[Any]:
        pool = self._pool_for(context)
        run = pool.imap if ordered else pool.imap_unordered
        yield from run(partial(_call, fn, failures), tasks, chunksize=max(1, chunksize))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
            self._context = None
