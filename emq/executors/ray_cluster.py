"""Ray: the same executor interface on a Ray cluster (local, or `ray start` nodes).

Workers are actors. The job's context (an evaluation spec with its model and data, a
campaign's statistics) is put in Ray's object store once per job and each actor fetches it
once, keeping what it builds from it (PTQ engine, cached rounded weights) for every task.
Tasks are sent in chunks, a few in flight per actor; results come back to the driver, which
alone writes files. An actor whose process dies is restarted and its tasks in flight are
retried (`max_retries`); a task that raised a transient error (`RETRY_EXCEPTIONS`) is retried
as well. A task that still fails raises, or with `failures=True` comes back as a TaskFailure.

Needs `pip install "emq[ray]"`; everything else in emq runs without Ray.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from ..errors import EmqError
from ..registry import Option
from ..specs import ParameterError
from . import Context, Executor, Task, TaskFailure, check_workers, describe_error, register

log = logging.getLogger(__name__)

# errors worth another attempt on another try: I/O (a network file system, a full /tmp) and a
# GPU out of memory next to another job; anything else (a bug, bad input) fails the same again
RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (OSError, MemoryError)
IN_FLIGHT = 2  # chunks queued per actor, so an actor never waits for the driver
PROBE_SECONDS = 10.0  # how long a cluster's head may take to accept a connection before it counts as unreachable


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise EmqError(
            'the Ray executor needs Ray: pip install "emq[ray]" (or choose --executor serial or process)'
        ) from e
    return ray


def check_reachable(address: str) -> None:
    """Refuse at once an address where no Ray head listens: `ray.init` would retry it for many
    minutes inside native code, where not even SIGTERM reaches the Python handlers."""
    if address == "local":
        return
    flag = f"--ray-address {address}"
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            address = canonicalize_bootstrap_address_or_die(address)
        except Exception as e:  # noqa: BLE001 - ConnectionError or ValueError: no cluster to join
            raise EmqError(
                f"{flag}: no Ray cluster runs on this machine ({str(e).splitlines()[0]}); start one with "
                "`ray start --head`, or leave --ray-address out to run a local one"
            ) from e
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EmqError(f"{flag}: give HOST:PORT of the cluster's head (e.g. 10.0.0.5:6379), or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS) as conn:
            speaks_grpc = _tls() or _answers_http2(conn)  # a TLS head cannot answer a plaintext preface
    except OSError as e:
        reason = "the host name does not resolve" if isinstance(e, socket.gaierror) else (e.strerror or str(e))
        raise EmqError(
            f"{flag}: no Ray cluster answers there ({reason}); check the address of the head (`ray status` on it), "
            "or leave --ray-address out to run a local one"
        ) from e
    if not speaks_grpc:
        raise EmqError(
            f"{flag}: something listens there but it is not a Ray head (it does not answer as a gRPC server); "
            "check the port of the head (`ray status` on it, usually 6379), or leave --ray-address out to run a "
            "local one"
        )


def _tls() -> bool:
    """Whether Ray talks TLS here (`RAY_USE_TLS`, as Ray reads it)."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def _answers_http2(conn: socket.socket) -> bool:
    """Whether the peer answers an HTTP/2 connection preface with a SETTINGS frame, as every gRPC
    server (a Ray head's GCS) does; a web server, a database or a silent port does not."""
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    header = b""
    try:
        while len(header) < 9:
            chunk = conn.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except TimeoutError:
        return False
    return header[3] == 0x04  # frame type SETTINGS


def _retryable() -> tuple[type[BaseException], ...]:
    import torch

    return (*RETRY_EXCEPTIONS, torch.cuda.OutOfMemoryError)


class _Worker:
    """One actor: runs chunks of tasks against the context it fetched once per job."""

    def __init__(self) -> None:
        import torch

        from ..threads import cap_native_pools

        torch.set_num_threads(1)  # one core per actor (its num_cpus), as in the process pool
        cap_native_pools(1)
        self._key: str | None = None
        self._context: Any = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, fn: Callable[[Context, Task], Any], context_ref: list, tasks: list, failures: bool) -> list:
        """fn(context, task) per task. The context comes wrapped in a list so that Ray hands
        the reference over unresolved and it is fetched only when it changes (once per job,
        and again after a restart)."""
        ray = _ray()
        ref = context_ref[0]
        if self._key != ref.hex():
            self._context, self._key = ray.get(ref), ref.hex()
        retry = _retryable()
        out = []
        for task in tasks:
            try:
                out.append(fn(self._context, task))
            except retry:
                raise  # Ray retries the chunk (retry_exceptions)
            except Exception as e:  # noqa: BLE001 - recorded with its error when the job asks
                if not failures:
                    raise
                out.append(TaskFailure(task, describe_error(e), 1))
        return out


@register("ray")
class RayExecutor(Executor):
    """`workers` actors of one CPU (and `gpus_per_worker` GPUs) each on the cluster at
    `address` ("auto" = the one `ray start` runs here; None = a cluster already initialised
    in this process, else a new local one). A cluster started here is shut down by close()."""

    description = 'actors on a Ray cluster; pip install "emq[ray]"'
    options = (
        Option(
            "address",
            str,
            None,
            "with --executor ray: 'auto' (the cluster `ray start` runs on this machine) or HOST:PORT of its head "
            "(default: a local cluster started for this command)",
            flag="--ray-address",
        ),
        Option("gpus_per_worker", float, 0.0, "with --executor ray: GPUs each worker reserves (default 0)", minimum=0),
    )

    @classmethod
    def check_options(cls, options: dict[str, Any], device: Any = None) -> None:
        """A CUDA device needs GPUs reserved per worker, and is numbered from 0 inside each worker."""
        if device is None or device.type != "cuda":
            return
        if not options.get("gpus_per_worker"):
            raise EmqError(
                f"--device {device} with --executor ray: give --gpus-per-worker (Ray shows a worker only the GPUs "
                "it reserved)"
            )
        if device.index not in (None, 0):
            raise EmqError(
                f"--device {device} with --executor ray: use --device cuda (each worker sees the GPUs Ray gave it, "
                "numbered from 0)"
            )

    def __init__(
        self, workers: int = 2, address: str | None = None, gpus_per_worker: float = 0, max_retries: int = 3
    ) -> None:
        check_workers(workers)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ParameterError("max_retries", max_retries, "must be an integer >= 0")
        if not isinstance(gpus_per_worker, (int, float)) or isinstance(gpus_per_worker, bool) or gpus_per_worker < 0:
            raise ParameterError("gpus_per_worker", gpus_per_worker, "must be a number >= 0")
        ray = _ray()
        self.workers, self.address, self.gpus_per_worker, self.max_retries = (
            workers,
            address,
            gpus_per_worker,
            max_retries,
        )
        self._started = False
        if not ray.is_initialized():
            if address is not None:
                check_reachable(address)
            ours = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
            try:
                ray.init(
                    address=address or "local",
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,  # "local": never join another cluster
                    **({"num_cpus": max(workers, os.cpu_count() or 1)} if address is None else {}),
                )
            except BaseException as e:
                ray.shutdown()  # stop whatever part of a cluster started (SIGTERM or Ctrl-C during start-up)
                if not isinstance(e, (ConnectionError, RuntimeError, ValueError)):
                    raise
                raise EmqError(
                    f"cannot reach a Ray cluster at --ray-address {address}: {e}; start one with `ray start --head` "
                    "(or leave --ray-address out to run a local one)"
                ) from e
            finally:
                if callable(ours):  # Ray replaced a handler of the caller's (the CLI's): that one stays in charge
                    signal.signal(signal.SIGTERM, ours)
            self._started = True
        self._check_resources(ray)
        options = {"num_cpus": 1, "num_gpus": gpus_per_worker, "max_restarts": -1, "max_task_retries": max_retries}
        self._actors = [ray.remote(_Worker).options(**options).remote() for _ in range(workers)]
        self._refs: tuple[Any, Any] | None = None  # (context, its object ref) of the current job

    def _check_resources(self, ray: Any) -> None:
        have, free = ray.cluster_resources(), ray.available_resources()
        need = {"CPU": self.workers, "GPU": self.workers * self.gpus_per_worker}
        for kind, n in need.items():
            if n and have.get(kind, 0) < n:
                self.close()
                raise ParameterError(
                    "workers",
                    self.workers,
                    f"the Ray cluster has {have.get(kind, 0):g} {kind}s and the workers ask for {n:g}; "
                    "ask for fewer workers or add nodes (`ray start --address ...`)",
                )
            if n and free.get(kind, 0) < n:
                log.warning(
                    "the Ray cluster has %g of its %g %ss free and the workers ask for %g: they wait until other "
                    "jobs release them",
                    free.get(kind, 0),
                    have[kind],
                    kind,
                    n,
                )

    def worker_pids(self) -> list[int]:
        """The actors' current process ids (they change when an actor is restarted)."""
        ray = _ray()
        return ray.get([a.pid.remote() for a in self._actors])

    def _context_ref(self, context: Any) -> Any:
        if self._refs is None or self._refs[0] is not context:
            self._refs = (context, _ray().put(context))
        return self._refs[1]

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
        if not self._actors:
            raise EmqError("this Ray executor is closed; make a new one")
        ray = _ray()
        ref = [self._context_ref(context)]
        chunks = _chunks(enumerate(tasks), max(1, chunksize))
        # Tasks of a chunk that failed for good without being surely to blame: its chunk had other tasks,
        # or its worker died while other chunks were queued on it (any of them may have killed it). Each
        # runs again alone on an idle actor that takes nothing else meanwhile, with the attempts it had.
        suspects: deque[tuple[list, int]] = deque()
        pending: dict[Any, tuple[Any, list, int, bool]] = {}  # ref -> (actor, chunk, attempts before, ran alone)

        def queued(actor: Any) -> list[bool]:
            return [alone for a, _, _, alone in pending.values() if a is actor]

        def submit(actor: Any) -> None:
            mine = queued(actor)
            if any(mine) or (suspects and mine):
                return
            chunk, before, alone = (*suspects.popleft(), True) if suspects else (next(chunks, None), 0, False)
            if chunk is not None:
                call = actor.run.options(retry_exceptions=list(_retryable()))
                pending[call.remote(fn, ref, [t for _, t in chunk], failures)] = (actor, chunk, before, alone)

        buffer: dict[int, Any] = {}
        following = 0
        try:
            for actor in self._actors:
                for _ in range(IN_FLIGHT):
                    submit(actor)
            while pending:
                [done], _ = ray.wait(list(pending), num_returns=1)
                actor, chunk, before, alone = pending.pop(done)
                try:
                    outs = ray.get(done)
                except ray.exceptions.RayError as e:
                    if not failures:
                        cause = getattr(e, "cause", None)
                        raise (
                            cause
                            if isinstance(e, ray.exceptions.RayTaskError) and cause is not None
                            else EmqError(f"a task failed on the Ray cluster: {self._failure(e)[0]}")
                        ) from e
                    error, attempts = self._failure(e)
                    if not (
                        len(chunk) == 1 and (alone or isinstance(e, ray.exceptions.RayTaskError))
                    ):  # not surely its own fault
                        suspects.extend(([item], before + attempts) for item in chunk)
                        for other in self._actors:  # an idle actor takes a suspect now
                            if not queued(other):
                                submit(other)
                        continue
                    outs = [TaskFailure(chunk[0][1], error, before + attempts)]
                submit(actor)
                for (i, _), out in zip(chunk, outs, strict=True):
                    if not ordered:
                        yield out
                    else:
                        buffer[i] = out
                while following in buffer:
                    yield buffer.pop(following)
                    following += 1
        finally:
            for left in pending:
                ray.cancel(left)

    def _failure(self, e: Exception) -> tuple[str, int]:
        """The error of a task that failed for good, and how many times it was tried."""
        ray = _ray()
        if isinstance(e, ray.exceptions.RayTaskError):
            cause = e.cause if e.cause is not None else e
            return describe_error(cause), (self.max_retries + 1 if isinstance(cause, _retryable()) else 1)
        if isinstance(e, ray.exceptions.RayActorError):
            return f"its worker died ({describe_error(e).splitlines()[0]})", self.max_retries + 1
        return describe_error(e).splitlines()[0], 1

    def close(self) -> None:
        ray = _ray()
        if ray.is_initialized():  # else the cluster is gone, and the actors with it
            for actor in getattr(self, "_actors", []):
                ray.kill(actor)
        self._actors, self._refs = [], None
        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False


def _chunks(items: Iterable[Any], size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
