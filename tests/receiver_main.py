"""A bare receiving process for tests: ``python -m tests.receiver_main DATA_DIR PORT [MAX_FILE_BYTES]``.

Serves the node's Storage SCP on 127.0.0.1:PORT with a fresh SQLite queue in DATA_DIR until
SIGINT. With MAX_FILE_BYTES, the process may not write files larger than that
(RLIMIT_FSIZE; writes past it fail with EFBIG, as on a full disk).
"""

from __future__ import annotations

import resource
import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    data, port = Path(argv[1]), int(argv[2])
    if len(argv) > 3:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        limit = int(argv[3])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from dicomnode.config import DicomSettings, StoreSettings
    from dicomnode.receiving.handlers import ReceiveContext
    from dicomnode.receiving.scp import start_scp
    from dicomnode.store.db import make_engine, make_sessionmaker
    from dicomnode.store.files import FileStore

    context = ReceiveContext(FileStore(data), make_sessionmaker(make_engine(StoreSettings(data_dir=data))))
    try:
        start_scp(DicomSettings(port=port), context, block=True)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
