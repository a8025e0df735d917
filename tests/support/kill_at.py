"""Run the CLI with S3 clients that SIGKILL this very process at a precise point.

    python -P kill_at.py OPERATION WHEN NTH [CLI ARGS...]

The process kills itself when the NTH ``WHEN`` event (``after-call``: the call
has returned; ``before-send``: it is about to be sent) of the S3 operation
OPERATION fires, counting over every client the CLI makes. To be seen there,
HEADs are sent by botocore (``s3.head_client = "botocore"``). Test code: the
handler is installed here, never by the product.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from trr_assets import cli, storage


def main(argv: list[str]) -> int:
    operation, when, nth = argv[0], argv[1], int(argv[2])
    if operation == "HeadObject":
        # The native HEAD client signs and sends HEADs itself, past botocore's
        # events: HEADs go through botocore, where the handler below sees them.
        os.environ["TRR_ASSETS_S3_HEAD_CLIENT"] = "botocore"
    seen = [0]
    lock = threading.Lock()

    def kill(**_: Any) -> None:
        with lock:
            seen[0] += 1
            if seen[0] >= nth:
                sys.stderr.write(f"test: SIGKILL at {when} {operation} #{seen[0]}\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    real = storage.make_client

    def make_client(*args: Any, **kwargs: Any) -> Any:
        client = real(*args, **kwargs)
        client.meta.events.register(f"{when}.s3.{operation}", kill)
        return client

    storage.make_client = make_client  # type: ignore[assignment]
    return cli.main(argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
