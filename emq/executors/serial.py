"""Everything in this process, one task after another: the reference every other executor
must reproduce exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import Context, Executor, Task, register, run_task


@register("serial")
class SerialExecutor(Executor):
    def __init__(self, workers: int = 1) -> None:
        self.workers = 1

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
        for task in tasks:
            yield run_task(fn, context, task, failures)
