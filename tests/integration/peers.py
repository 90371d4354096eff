"""Real DICOM peers and a real node process for integration tests, each bounded in time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO_ROOT, dcmtk, free_port, wait_for_port


@dataclass
class StoreSCP:
    """A DCMTK storescp writing what it receives into ``folder``."""

    ae_title: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def spec(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


@contextmanager
def run_storescp(
    folder: Path, ae_title: str = "PACS", port: int | None = None, options: tuple[str, ...] = ("--accept-all",)
) -> Iterator[StoreSCP]:
    """Run ``/usr/bin/storescp`` on 127.0.0.1 until the block ends.

    Args:
        options: further storescp options, e.g. ``("+uf",)`` to keep every delivery of
            one SOP Instance UID in its own file, ``("+B", "+xa")`` for bit-preserving writes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "--aetitle", ae_title, "--output-directory", str(folder), *options, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
        yield StoreSCP(ae_title, port, folder, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class NodeProcess:
    """A ``dicomnode serve`` subprocess."""

    port: int
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL the node, then wait until its orphaned receiving processes stopped listening.

        A restart must not race them: a new node's "port accepts" would otherwise be
        answered by a dying child of the killed one (as under systemd, which would kill
        the whole group, the test waits for the port to close).
        """
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                return
            time.sleep(0.1)
        raise AssertionError(f"port {self.port} still accepts 20 s after the node was killed")

    def stop(self) -> int:
        """SIGTERM the node (SIGKILL after 30 s); its exit code."""
        return stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    """Send ``sig`` to a running ``process``, SIGKILL it when it outlives ``timeout_s``; its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return int(process.returncode)


def start_node(data_dir: Path, args: list[str], *, port: int | None = None, log_name: str = "node.log") -> NodeProcess:
    """Start ``python -m dicomnode serve`` on 127.0.0.1 and wait until it accepts connections."""
    port = port or free_port()
    log = data_dir.parent / log_name
    handle = log.open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir), *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        env=env,
    )
    handle.close()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"node exited with {process.returncode}:\n{log.read_text()}")
            try:
                wait_for_port(port, timeout_s=1.0)
                break
            except TimeoutError:
                continue
        else:
            raise TimeoutError(f"node did not listen within 120 s:\n{log.read_text()}")
    except BaseException:
        process.kill()
        raise
    return NodeProcess(port, data_dir, log, process)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.25) -> None:
    """Poll ``condition`` until true; raise AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


#: storescu proposes only uncompressed transfer syntaxes unless told otherwise and cannot
#: decompress JPEG 2000 itself: a compressed file needs the option proposing its syntax.
STORESCU_PROPOSAL = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
}


def storescu(port: int, files: list[Path], ae_title: str = "DICOMNODE", calling: str = "MODALITY") -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK's storescu (full path: pynetdicom's script shadows the name).

    Files are grouped by transfer syntax, one storescu run (one association) per group,
    each proposing its syntax. Returns the first failed run, else the last one.
    """
    from pydicom import dcmread

    groups: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(STORESCU_PROPOSAL.get(syntax, ""), []).append(path)
    result: subprocess.CompletedProcess[str] | None = None
    for option, paths in groups.items():
        result = subprocess.run(
            [dcmtk("storescu"), "-aet", calling, "-aec", ae_title, *([option] if option else []),
             "127.0.0.1", str(port), *map(str, paths)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            return result
    if result is None:
        raise ValueError("no files to send")
    return result


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of ``dciodvfy`` output that are errors (0 is the goal)."""
    from tests.helpers import require_tool

    tool = require_tool("dciodvfy")
    result = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    return [line for line in output.splitlines() if line.startswith("Error")]


@contextmanager
def node_sending_to_storescp(tmp_path: Path, model: Path, *args: str) -> Iterator[tuple[NodeProcess, StoreSCP]]:
    """A node in ``tmp_path/node`` on ``model``, batching every second, that sends its
    results to a DCMTK storescp writing into ``tmp_path/pacs``; further serve ``args``.

    The node must stop cleanly (exit code 0) when the block ends; its log is in ``node.log``.
    """
    with run_storescp(tmp_path / "pacs") as pacs:
        node = start_node(
            tmp_path / "node",
            ["--destination", pacs.spec, "--model", str(model), "--stable-after", "1", "--interval", "1", *args],
        )
        try:
            yield node, pacs
        finally:
            assert node.stop() == 0, node.log.read_text()[-3000:]


def dicomnode_status(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``dicomnode status --data-dir DATA_DIR [extra]`` as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", "status", "--data-dir", str(data_dir), *extra],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
