"""Wiring of a serving node: settings -> database -> receiver -> model -> scheduler.

``dicomnode serve`` builds a :class:`Node`, starts it and blocks until SIGTERM or
SIGINT. Tests build one in-process the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any

from dicomnode.config import Settings
from dicomnode.errors import ModelError
from dicomnode.store import pidfile
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.files import FileStore, check_data_dir
from dicomnode.store.space import low_disk

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from dicomnode.inference.runner import ModelRunner
    from dicomnode.receiving.processes import ReceiverPool
    from dicomnode.receiving.scp import Listeners
    from dicomnode.scheduling import NodeWorker
    from dicomnode.web.server import WebServer

logger = logging.getLogger(__name__)


def preflight(settings: Settings, role: str) -> None:
    """Check what ``serve`` needs before it changes anything, in this order.

    1. The model (roles that run batches): it resolves and its manifest is valid, and
       the weights file is there (its sha256 is verified when it is loaded).
    2. The data folder: not a file, created when missing, readable and writable.
    3. The web server (``http.port`` set): off loopback only with ``http.token``.

    Raises:
        ConfigError: the web server would listen off loopback without a token.
        ModelError: the model cannot be found or its manifest is invalid.
        StorageError: the data folder cannot be used (the message names it).
    """
    if role != "receiver":
        from dicomnode.inference.registry import resolve_manifest

        loaded = resolve_manifest(settings.model.name)
        if not loaded.weights_path.is_file():
            raise ModelError(f"model {settings.model.name!r}: weights file {loaded.weights_path} is missing")
    check_data_dir(settings.store.data_dir, create=True)
    if settings.http.port is not None:
        from dicomnode.web.server import check_exposure

        check_exposure(settings)


class Node:
    """A receiver and a batch worker sharing one database and data folder.

    Args:
        settings: the merged settings.
        runner: an already loaded model (tests); None = load ``settings.model``.
        run_worker: start the batch/send scheduler (False: receive only).
        run_receiver: open the DICOM port (False: a worker process beside receivers).
        listeners: already bound DICOM port(s) to serve (``serve`` binds them once and
            shares them with its extra receiving processes); None = bind here.
    """

    def __init__(
        self,
        settings: Settings,
        runner: ModelRunner | None = None,
        *,
        run_worker: bool = True,
        run_receiver: bool = True,
        listeners: Listeners | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.run_worker = run_worker
        self.run_receiver = run_receiver
        self.engine = make_engine(settings.store)
        self.sessions = make_sessionmaker(self.engine)
        self.files = FileStore(settings.store.data_dir, fsync=settings.store.fsync)
        self.listeners = listeners
        self.server: Any = None
        self.scheduler: BackgroundScheduler | None = None
        self.worker: NodeWorker | None = None

    def start(self) -> None:
        """Load the model, start the scheduler, then open the DICOM port.

        Raises:
            ModelError: the model cannot be loaded (nothing is left running).
            OSError: the port cannot be bound.
        """
        from dicomnode.inference.loading import load_runner
        from dicomnode.pipeline import PipelineOptions
        from dicomnode.scheduling import NodeWorker, start_scheduler
        from dicomnode.workpool import open_pool, wait_ready

        removed = self.files.remove_partials()
        if removed:
            logger.info("removed %d partial file(s) left by an earlier crash", removed)
        if self.run_worker:
            pool = open_pool(self.settings.scheduler.pipeline_processes)  # starts while the model loads
            try:
                if self.runner is None:
                    self.runner = load_runner(self.settings.model)
                self.runner.warm_up(self.settings.model.batch_size)
                wait_ready(pool)  # the first study does not wait for workers to start
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            identity = self.runner.identity
            logger.info("model %s v%s (%s) loaded", identity.name, identity.version, identity.architecture)
            options = PipelineOptions(
                outputs=self.settings.outputs,
                model_batch_size=self.settings.model.batch_size,
                explain=self.settings.model.explain,
                out_of_population=self.settings.model.out_of_population,
            )
            self.worker = NodeWorker(
                self.sessions,
                self.files,
                self.runner,
                self.settings.scheduler,
                self.settings.destination,
                self.settings.destination.calling_ae_title or self.settings.dicom.ae_title,
                options,
                pool=pool,
                retention=_retention(self.settings),
                retention_interval_s=self.settings.store.retention_interval_s,
            )
            self.worker.recover_orphans()
            self.scheduler = start_scheduler(self.worker, self.settings.scheduler)
        if not self.run_receiver:
            return
        try:
            self.start_receiver()
        except Exception:
            self.stop()
            raise
        dicom = self.settings.dicom
        logger.info("listening as %s on %s:%d", dicom.ae_title, dicom.bind_address, dicom.port)

    def start_receiver(self) -> None:
        """Serve the DICOM port (``listeners`` when given) in a background thread.

        :meth:`start` calls it; an extra receiving process
        (:mod:`dicomnode.receiving.processes`) calls only this, on the sockets it inherited.

        Raises:
            OSError: the port cannot be bound.
        """
        from dicomnode.receiving.handlers import ReceiveContext
        from dicomnode.receiving.scp import start_scp
        from dicomnode.store.queue import utcnow

        context = ReceiveContext(
            files=self.files,
            sessionmaker=self.sessions,
            clock=utcnow,
            min_free_bytes=self.settings.store.min_free_bytes,
            queue_writes=self.engine.dialect.name == "sqlite",
        )
        self.server = start_scp(self.settings.dicom, context, block=False, listeners=self.listeners)

    def stop(self, *, grace_s: float = 5.0) -> None:
        """Close the DICOM port first (no new work), then stop the scheduler.

        Args:
            grace_s: seconds running associations may take to finish before they are aborted.
        """
        if self.server is not None:
            from dicomnode.receiving.scp import stop_scp

            stop_scp(self.server, grace_s=grace_s)
            self.server = None
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        if self.worker is not None and self.worker.pool is not None:
            self.worker.pool.shutdown(wait=True)
            self.worker.pool = None
        self.engine.dispose()


def _retention(settings: Settings) -> timedelta | None:
    """``store.retention`` as a duration (None: files are kept)."""
    from dicomnode.durations import parse_duration

    return parse_duration(settings.store.retention) if settings.store.retention is not None else None


ROLES = ("all", "receiver", "worker")
#: Seconds ``serve`` retries binding a port that is in use (see :func:`serve_forever`).
_BIND_RETRY_S = 3.0


def serve_forever(settings: Settings, role: str = "all") -> None:
    """Run a node until SIGTERM or SIGINT, then shut it down cleanly.

    Args:
        settings: the merged settings.
        role: ``"all"`` (receiver and worker), ``"receiver"`` (DICOM port only) or
            ``"worker"`` (batches and sending only); separate processes share the
            data folder and database. With a receiver, the DICOM port is served by
            ``dicom.receiver_processes`` processes (this one and children sharing
            its listening sockets, :mod:`dicomnode.receiving.processes`); they all
            stop with this one.

    While it runs, the process holds a pid file in the data folder
    (:mod:`dicomnode.store.pidfile`): ``dicomnode status`` reports it as running.

    Raises:
        ModelError: the model cannot be loaded.
        OSError: the DICOM port cannot be bound.
    """
    with pidfile.hold(settings.store.data_dir, _process_record(settings, role)):
        _serve(settings, role)


def _process_record(settings: Settings, role: str) -> pidfile.NodeProcess:
    from dicomnode.store.queue import utcnow

    return pidfile.NodeProcess(
        pid=os.getpid(),
        role=role,
        destination=None if role == "receiver" else settings.destination.spec(),
        started_at=utcnow().isoformat(timespec="seconds") + "Z",
        model=None if role == "receiver" else settings.model.name,
    )


def _serve(settings: Settings, role: str) -> None:
    # A plain flag, not a threading.Event: the handler runs in the main thread between
    # bytecodes, and Event.set() takes a lock the interrupted code may already hold.
    stop_requested = False

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    from dicomnode.web import multiproc

    # Before anything imports prometheus_client; the receiving children inherit it.
    multiproc.prepare(settings.store.data_dir)
    from dicomnode.receiving.processes import ReceiverPool, receiver_count
    from dicomnode.receiving.scp import bind_listeners

    pool: ReceiverPool | None = None
    web: WebServer | None = None
    listeners = None
    try:
        if role != "worker":
            # A SIGKILLed predecessor's receiving processes close their copies of the
            # port within a fraction of a second (PR_SET_PDEATHSIG): wait that long.
            listeners = bind_listeners(settings.dicom, retry_s=_BIND_RETRY_S)
        node = Node(settings, run_worker=role != "receiver", run_receiver=role != "worker", listeners=listeners)
        try:
            node.start()
            count = receiver_count(settings.dicom.receiver_processes) if listeners is not None else 1
            if listeners is not None and count > 1:
                pool = ReceiverPool(settings, listeners, count - 1)
                pool.start()
            if settings.http.port is not None:
                web = _start_web(settings, node, lambda: pool)
            while not stop_requested:
                time.sleep(0.5)
                if pool is not None and not stop_requested:
                    pool.check()
            logger.info("signal received: shutting down")
        finally:
            if web is not None:
                web.stop()
            if pool is not None:
                pool.terminate()  # the children drain while this process does
            node.stop()
            if pool is not None:
                pool.wait()
    finally:
        if listeners is not None:
            listeners.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def node_health(settings: Settings, node: Node, pool: ReceiverPool | None) -> list[str]:
    """Why the node is unhealthy, for ``/healthz`` (empty: healthy).

    Checks the DICOM server thread (receiver roles), every receiving child
    process, the batch scheduler and its thread (worker roles), and the free
    space of the data folder against ``store.min_free_bytes``.
    """
    problems: list[str] = []
    if node.run_receiver:
        if node.server is None or not any(
            t.name == "dicomnode-scp" and t.is_alive() for t in threading.enumerate()
        ):
            problems.append("the DICOM receiver is not running")
        if pool is not None and len(pool.pids) < pool.size:
            problems.append(f"{pool.size - len(pool.pids)} of {pool.size} extra receiving process(es) not running")
    if node.run_worker:
        scheduler = node.scheduler
        thread = getattr(scheduler, "_thread", None)
        if scheduler is None or not scheduler.running or (thread is not None and not thread.is_alive()):
            problems.append("the batch scheduler is not running")
    low = low_disk(node.files.data_dir, settings.store.min_free_bytes)
    if low is not None:
        problems.append(low)
    return problems


def _start_web(settings: Settings, node: Node, pool: Callable[[], ReceiverPool | None]) -> WebServer:
    """Start the web server (``http.port``) over the node's database and data folder.

    Raises:
        OSError: the port cannot be bound.
    """
    from dicomnode.store.queue import utcnow
    from dicomnode.web.app import WebContext
    from dicomnode.web.demo import DemoModels
    from dicomnode.web.server import WebServer

    if settings.http.port is None:  # pragma: no cover - checked by the caller
        raise ValueError("http.port is not set")
    context = WebContext(
        sessions=node.sessions,
        files=node.files,
        http=settings.http,
        health=lambda: node_health(settings, node, pool()),
        clock=utcnow,
        demo=DemoModels(device=settings.model.device),
    )
    web = WebServer(context, settings.dicom.bind_address, settings.http.port)
    web.start()
    return web
