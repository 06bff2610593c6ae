"""One executor interface for every expensive job: bench builds, reliability re-evaluation,
whole-configuration scoring and campaign fitness.

An executor maps `fn(context, task)` over tasks. The `context` is the large, shared part of
the job (an evaluation spec, a campaign's statistics and bench splits, a proxy with its
target); an executor ships it to each worker once, not once per task, and the worker keeps
whatever it builds from it (a PTQ engine, a table evaluator) for every task it receives.
`fn` and `context` must be picklable for executors that leave the process.

With `failures=True` a task that raised (after whatever retries the executor makes) yields a
`TaskFailure` in place of its result, so a long job records it and goes on instead of losing
the work in flight; by default the error propagates.

Executors register themselves by name (`@register("name")`) in a module of this package;
every module here is imported when a name is looked up, so a new executor is one new file
(ray_cluster.py is one, importing Ray only when it is used). An executor's settings are
`Option`s in its `options`: its constructor takes them as keywords and the CLI builds one flag
per option (`--ray-address`, `--gpus-per-worker`), accepted only with `--executor <its name>`.

tests/test_plugins.py shows a new executor with one option, end to end.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import EmqError
from ..registry import Option, Registry
from ..specs import ParameterError

Task = Any
Context = Any
EXECUTORS: Registry[type[Executor]] = Registry("executor", "executor", order="name")


@dataclass(frozen=True)
class TaskFailure:
    """A task that kept failing: what `map(..., failures=True)` yields instead of its result."""

    task: Any
    error: str  # "ExceptionType: message" of the last attempt
    attempts: int


def run_task(fn: Callable[[Context, Task], Any], context: Context, task: Task, failures: bool) -> Any:
    """fn(context, task), or its TaskFailure when `failures` is set (what local workers run)."""
    if not failures:
        return fn(context, task)
    try:
        return fn(context, task)
    except Exception as e:  # noqa: BLE001 - any error of one task is recorded, the job goes on
        return TaskFailure(task, describe_error(e), 1)


def describe_error(e: BaseException) -> str:
    """An error as one recordable string, the same from every executor."""
    return f"{type(e).__name__}: {e}"


class Executor(ABC):
    """Runs `fn(context, task)` for many tasks; `close()` releases its workers."""

    workers: int = 1
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # a few words for `--executor`'s help
    options: ClassVar[tuple[Option, ...]] = ()  # keywords of the constructor besides `workers`

    @classmethod
    def check_options(cls, options: dict[str, Any], device: Any = None) -> None:
        """Refuse, before anything starts, option values that cannot work together (or with the
        torch `device` the job runs on); `options` holds the ones given, keyed by Option name."""
        return None

    @abstractmethod
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
        """Yield fn(context, task) per task: in task order when `ordered`, else as each finishes;
        a TaskFailure for a task that raised, when `failures`."""

    def close(self) -> None:
        """Release workers; the executor may not be used afterwards."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register(name: str) -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator: make an executor available under `name` (e.g. `--executor name`)."""

    def deco(cls: type[Executor]) -> type[Executor]:
        cls.name = name
        return EXECUTORS.add(name, cls)

    return deco


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")  # a module already imported is not run again


def executor_names() -> list[str]:
    """Registered executor names, in alphabetical order."""
    _load_all()
    return list(EXECUTORS)


def executor_classes() -> Registry[type[Executor]]:
    """Every registered executor class by name (their `options` and `description`)."""
    _load_all()
    return EXECUTORS


def check_workers(workers: Any) -> int:
    """A worker count: an integer >= 1 (checked before any expensive set-up)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ParameterError("workers", workers, "must be an integer >= 1")
    return workers


def make_executor(executor: str | Executor | None = None, workers: int = 1, **options: Any) -> Executor:
    """An executor by name, or the given one; None picks serial for one worker, else a process pool."""
    if isinstance(executor, Executor):
        return executor
    check_workers(workers)
    name = executor or ("serial" if workers == 1 else "process")
    _load_all()
    if name not in EXECUTORS:
        raise ParameterError("executor", name, f"use one of {', '.join(EXECUTORS)}")
    cls = EXECUTORS[name]
    try:
        return cls(workers=workers, **options)
    except TypeError as e:
        raise EmqError(f"executor {name!r} does not take the options {sorted(options)}") from e


@contextmanager
def executor_for(executor: str | Executor | None = None, workers: int = 1, **options: Any) -> Iterator[Executor]:
    """An executor for one job: a given Executor is lent (its owner closes it); one made here
    from a name or a worker count is closed when the job ends."""
    if isinstance(executor, Executor):
        yield executor
        return
    made = make_executor(executor, workers, **options)
    try:
        yield made
    finally:
        made.close()


__all__ = [
    "Executor",
    "TaskFailure",
    "EXECUTORS",
    "Option",
    "check_workers",
    "describe_error",
    "run_task",
    "executor_for",
    "executor_classes",
    "executor_names",
    "make_executor",
    "register",
]
