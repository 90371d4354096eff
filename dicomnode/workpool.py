"""Processes for the pipeline's CPU stages, beside the model.

Decoding an image (pydicom, numpy, cv2) and building, validating, encoding and writing
its result objects (highdicom, pydicom, fsync) are pure Python or single-threaded
library work; the model uses torch's threads (or the GPU). :func:`open_pool` gives an
executor for those stages: a pool of worker processes sized to the CPU count, or, with
``processes=0``, an executor that runs each call at once in the calling thread (the
behaviour before the pool existed; tests and ``predict`` use it).

Workers are started with ``spawn``: the node process holds torch, a scheduler thread
and a web server thread, none of which may be forked. They import the stage functions'
modules (no torch: the stages never touch the model), handle one call at a time and are
reused. The pool starts its workers when it is opened (they import the stage modules
while the node loads its model) and is stopped with the node's worker.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait
from logging.handlers import QueueHandler, QueueListener
from multiprocessing.queues import Queue
from typing import Any, Literal, ParamSpec, TypeVar

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

Processes = int | Literal["auto"]


class InlineExecutor(Executor):
    """Runs each submitted call immediately in the calling thread; its Future is done."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the Future
            future.set_exception(exc)
        return future


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total), >= 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pool_size(processes: Processes) -> int:
    """Worker processes for a ``scheduler.pipeline_processes`` setting; 0 = in-process."""
    if processes == "auto":
        return cpu_count()
    if processes < 0:
        raise ValueError(f"pipeline processes must be 'auto' or >= 0, got {processes}")
    return processes


class _Forward(logging.Handler):
    """Hands a record from a worker to the logger of the same name in this process."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def _start_worker(records: Queue[Any], level: int, parent: int) -> None:
    """Initializer of each worker.

    Every record and warning goes to the parent's queue: the parent's handlers (and so
    its PHI guard) see them, nothing is printed here. A daemon thread ends the worker
    when the parent is gone (a node killed with SIGKILL leaves no idle workers behind).
    """
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(records)]
    root.setLevel(level)
    logging.captureWarnings(True)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_with_parent(parent: int, period_s: float = 1.0) -> None:
    """End this process within ``period_s`` seconds of ``parent`` exiting (re-parenting)."""
    while os.getppid() == parent:
        time.sleep(period_s)
    os._exit(0)


class ProcessPool(ProcessPoolExecutor):
    """A ``spawn`` process pool whose workers log through this process's handlers."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        #: the start-up calls that import the stage modules in each worker (see :meth:`wait_ready`)
        self.warming: list[Future[None]] = []
        context = multiprocessing.get_context("spawn")
        self._records: Queue[Any] = context.Queue()
        self._listener = QueueListener(self._records, _Forward())
        self._listener.start()
        super().__init__(
            max_workers=processes,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self._records, logging.getLogger().getEffectiveLevel(), os.getpid()),
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until every worker has imported the stage modules (at most ``timeout_s``).

        Raises:
            TimeoutError: the workers are not ready in time.
            BrokenExecutor: a worker died while starting.
        """
        done, pending = wait(self.warming, timeout=timeout_s)
        if pending:
            raise TimeoutError(f"pipeline workers not ready after {timeout_s:.0f} s")
        for future in done:
            future.result()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if self._listener._thread is not None:  # stop once (shutdown may be called again)
            self._listener.stop()


_STAGE_MODULES = (
    "dicomnode.pipeline",
    "dicomnode.inference.preprocess",
    "dicomnode.explain.render",
    "dicomnode.outputs.sc",
    "dicomnode.outputs.sr",
    "dicomnode.outputs.validate",
    "highdicom.sr",
    "highdicom.sc",
)


def _import_stage_modules() -> None:
    """Import what the stages use, so that the first real call does not pay for it."""
    for name in _STAGE_MODULES:
        importlib.import_module(name)


def open_pool(processes: Processes) -> Executor:
    """An executor for the pipeline's CPU stages.

    Args:
        processes: worker processes; ``"auto"`` = the CPUs this process may use,
            0 = no processes (calls run inline, in order).

    Returns:
        An :class:`InlineExecutor` or a :class:`ProcessPool`; the caller shuts it down
        (``shutdown(wait=True)``).
    """
    size = pool_size(processes)
    if size == 0:
        return InlineExecutor()
    logger.info("pipeline: %d worker process(es) for decoding and building results", size)
    pool = ProcessPool(size)
    # Starts every worker now; they import while the node loads its model.
    pool.warming = [pool.submit(_import_stage_modules) for _ in range(size)]
    return pool


def is_broken(pool: Executor) -> bool:
    """True when a worker process of ``pool`` died: every later call would fail."""
    return isinstance(pool, ProcessPool) and bool(getattr(pool, "_broken", False))


def reopen(pool: Executor) -> Executor:
    """A fresh pool of the same size in place of a broken one (which is shut down)."""
    if not isinstance(pool, ProcessPool):
        return pool
    pool.shutdown(wait=False, cancel_futures=True)
    logger.warning("a pipeline worker process died; starting %d new one(s)", pool.processes)
    return open_pool(pool.processes)


def wait_ready(pool: Executor, timeout_s: float = 120.0) -> None:
    """Block until a process pool's workers are ready (an inline executor always is)."""
    if isinstance(pool, ProcessPool):
        pool.wait_ready(timeout_s)
