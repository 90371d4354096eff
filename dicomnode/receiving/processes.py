"""Several receiving processes on one port: a pool of children sharing the listening sockets.

Every association of one process is a thread under one interpreter lock, so one
Python process cannot use more than one core to receive. ``serve`` therefore binds
the DICOM port(s) once (:func:`dicomnode.receiving.scp.bind_listeners`) and, besides
serving them itself, starts ``DicomSettings.receiver_processes - 1`` children
(``python -m dicomnode.receiving.processes``) that serve the *same* listening sockets,
passed as inherited file descriptors. The kernel hands each new connection to one
of the processes waiting in ``accept``. No ``SO_REUSEPORT``: a second node started
on the same port still fails with "address in use".

The children share the data folder and the database with the parent: the per-UID
``flock`` of :mod:`dicomnode.store.files` and SQLite's ``BEGIN IMMEDIATE`` /
busy timeout make that safe. They never run the batch worker.

Lifetime:

* SIGTERM / SIGINT to a child stops it like ``serve`` (close the port, let running
  associations finish for a grace period, abort the rest).
* The parent's :meth:`ReceiverPool.stop` sends SIGTERM to every child, waits, and
  SIGKILLs one that outlives the grace period.
* A child asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``)
  and also polls its parent pid, so a SIGKILLed ``serve`` leaves no process
  listening behind.
* A child that dies on its own is started again by :meth:`ReceiverPool.check`
  (at most once per :data:`RESPAWN_DELAY_S` per slot).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from dicomnode.config import Settings
    from dicomnode.receiving.scp import Listeners

logger = logging.getLogger(__name__)

#: ``prctl`` option: signal to deliver to this process when its parent dies.
_PR_SET_PDEATHSIG: Final = 1
#: Most receiving processes ``receiver_processes = 0`` (auto) picks.
AUTO_MAX_PROCESSES: Final = 4
#: Least time (s) between two starts of one pool slot (a crash loop stays slow).
RESPAWN_DELAY_S: Final = 5.0
#: How often (s) a child checks that its parent is still alive.
_PARENT_POLL_S: Final = 0.5
#: Seconds a child may take beyond the drain grace period before it is killed.
_STOP_MARGIN_S: Final = 5.0


def receiver_count(configured: int) -> int:
    """The number of receiving processes for ``DicomSettings.receiver_processes``.

    Args:
        configured: the setting; 0 = auto (the CPU count, at most :data:`AUTO_MAX_PROCESSES`).

    Returns:
        At least 1.
    """
    if configured > 0:
        return configured
    return max(1, min(os.cpu_count() or 1, AUTO_MAX_PROCESSES))


@dataclass
class _Slot:
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0


class ReceiverPool:
    """Child receiving processes serving the parent's listening sockets.

    Args:
        settings: the node's settings (sent to each child as JSON on its stdin).
        listeners: the bound sockets the children serve too.
        children: number of child processes (the parent serves as well).
        grace_s: seconds a stopping child lets running associations finish.
    """

    def __init__(
        self, settings: Settings, listeners: Listeners, children: int, *, grace_s: float = 5.0
    ) -> None:
        self.settings = settings
        self.listeners = listeners
        self.grace_s = grace_s
        self._slots = [_Slot() for _ in range(max(children, 0))]
        self._stopping = False

    @property
    def size(self) -> int:
        """Number of child processes the pool keeps running."""
        return len(self._slots)

    @property
    def pids(self) -> list[int]:
        """Process ids of the children that are running now."""
        return [
            s.process.pid for s in self._slots if s.process is not None and s.process.poll() is None
        ]

    def start(self) -> None:
        """Start every child.

        Raises:
            OSError: a child process cannot be started.
        """
        for slot in self._slots:
            self._spawn(slot)
        logger.info(
            "%d more receiving process(es) share the DICOM port: %s", len(self._slots), self.pids
        )

    def check(self) -> None:
        """Reap children that exited and start them again (rate-limited per slot)."""
        if self._stopping:
            return
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is None or slot.process.poll() is None:
                continue
            if now - slot.started_at < RESPAWN_DELAY_S:
                continue
            logger.warning(
                "receiving process %d exited with %s: starting another",
                slot.process.pid,
                slot.process.returncode,
            )
            try:
                self._spawn(slot)
            except OSError as exc:
                logger.error("cannot start a receiving process: %s", exc)

    def terminate(self) -> None:
        """Ask every child to stop (SIGTERM); they drain in parallel. See :meth:`wait`."""
        self._stopping = True
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                try:
                    slot.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def wait(self) -> None:
        """Wait for the children to stop; SIGKILL those still running after the grace period."""
        deadline = time.monotonic() + self.grace_s + _STOP_MARGIN_S
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                logger.warning("receiving process %d did not stop: killing it", process.pid)
                process.kill()
                process.wait(timeout=10)

    def stop(self) -> None:
        """:meth:`terminate`, then :meth:`wait`."""
        self.terminate()
        self.wait()

    def _spawn(self, slot: _Slot) -> None:
        fds = self.listeners.fds()
        command = [
            sys.executable,
            "-m",
            "dicomnode.receiving.processes",
            "--parent",
            str(os.getpid()),
            "--fds",
            ",".join(str(fd) for fd in fds),
            "--grace",
            str(self.grace_s),
        ]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=fds, close_fds=True)
        stdin = process.stdin
        if stdin is not None:
            try:
                stdin.write(self.settings.model_dump_json().encode())
            finally:
                stdin.close()
        slot.process = process
        slot.started_at = time.monotonic()


def die_with_parent(parent_pid: int) -> bool:
    """Ask for SIGTERM when the parent dies; False when it has died already.

    ``PR_SET_PDEATHSIG`` is Linux-only; elsewhere only the polling in :func:`child_main`
    notices a dead parent.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
                logger.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:
            logger.debug("prctl unavailable: %s", exc)
    return os.getppid() == parent_pid


def child_main(argv: list[str] | None = None) -> int:
    """Entry point of one child receiving process (``python -m dicomnode.receiving.processes``).

    Reads the settings as JSON from stdin, serves the inherited listening sockets
    until SIGTERM/SIGINT or until the parent is gone, then stops like ``serve``.

    Returns:
        The exit status: 0 after a clean stop.
    """
    parser = argparse.ArgumentParser(prog="dicomnode-receiver")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--fds", required=True, help="listening socket fds: plain[,tls]")
    parser.add_argument("--grace", type=float, default=5.0)
    args = parser.parse_args(argv)

    sockets = [socket.socket(fileno=int(fd)) for fd in args.fds.split(",") if fd]
    # A plain flag, not a threading.Event: the handler runs in the main thread between
    # bytecodes, and Event.set() takes a lock the interrupted code may already hold
    # (a second SIGTERM arriving inside the first handler deadlocked a child).
    stop_requested = False

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        if os.getppid() != args.parent:  # PR_SET_PDEATHSIG: the node is gone
            _stop_listening(sockets)
        stop_requested = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    if not die_with_parent(args.parent):
        _stop_listening(sockets)
        return 0

    from dicomnode import logconfig
    from dicomnode.config import Settings
    from dicomnode.node import Node
    from dicomnode.receiving.scp import Listeners

    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    logconfig.configure(settings.log_level)
    listeners = Listeners(sockets[0], sockets[1] if len(sockets) > 1 else None)
    # The node's own wiring (settings -> engine -> FileStore -> handlers), receiver only:
    # no model, no scheduler, and no clean-up of partial files other processes may be writing.
    node = Node(settings, run_worker=False, listeners=listeners)
    try:
        if not stop_requested:
            node.start_receiver()
            logger.debug("receiving process %d serves the node's port", os.getpid())
        while not stop_requested:
            time.sleep(_PARENT_POLL_S)
            if os.getppid() != args.parent:
                logger.warning(
                    "parent %d is gone: receiving process %d stops", args.parent, os.getpid()
                )
                _stop_listening(sockets)
                break
    finally:
        node.stop(grace_s=args.grace)
        listeners.close()
    return 0


def _stop_listening(sockets: list[socket.socket]) -> None:
    """Stop the shared listening sockets for every process at once (``shutdown(2)``).

    Only when the node's main process is gone: otherwise one child stopping must not
    end the port for the others. Without this, a child draining its associations
    after the node was killed would keep accepting (and then resetting) connections
    meant for the node's next start, and keep it from binding the port.
    """
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(child_main())
