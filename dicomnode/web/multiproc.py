"""prometheus-client's multiprocess mode: one folder of metric files for all node processes.

Every process of a node (the serving process, its receiving children, a separate
worker) writes its counters and histograms to memory-mapped files in
``<data_dir>/metrics`` once ``PROMETHEUS_MULTIPROC_DIR`` names that folder, and
``/metrics`` sums them. The variable must be set before ``prometheus_client`` is
first imported (it picks its value class at import), so :func:`prepare` runs first
thing in ``serve``; child processes inherit it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from dicomnode.pids import pid_alive

logger = logging.getLogger(__name__)

#: The environment variable prometheus-client reads.
ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Folder of the data folder holding the metric files.
METRICS_AREA = "metrics"
_PID_FILE = re.compile(r"_(\d+)\.db$")


def prepare(data_dir: Path) -> Path:
    """Point prometheus-client at ``<data_dir>/metrics`` for this process and its children.

    Files of processes that no longer run are removed first, so a restarted node
    starts its counters from zero (Prometheus treats that as a counter reset).

    Returns:
        the metrics folder.
    """
    folder = (data_dir / METRICS_AREA).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for file in folder.glob("*.db"):
        match = _PID_FILE.search(file.name)
        if match is None or not _alive(int(match.group(1))):
            file.unlink(missing_ok=True)
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(folder):
        logger.warning("prometheus_client was imported before its multiprocess folder was set: "
                       "/metrics shows this process only")
    os.environ[ENV] = str(folder)
    return folder


def enabled() -> bool:
    """True when this process records into a multiprocess folder."""
    return bool(os.environ.get(ENV))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier life of this pid (containers reuse pids)
    return pid_alive(pid)
