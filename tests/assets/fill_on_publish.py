"""``python tests/assets/fill_on_publish.py run SPEC --store DIR``: the audit command line, with the disk under the
store filled up as the publish starts.

Only the moment is picked here: just before the run's tables are staged (``FILL_ON_PUBLISH_AT=stage``, the
default) or just before its manifest is written, its tables moved into place already (``manifest``), the file
named by ``FILL_ON_PUBLISH`` is written until the disk refuses with ENOSPC. Everything after that is the product
meeting a disk that is really full."""

import errno
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from interp_audit.store import ReportStore  # noqa: E402


def fill(path: str) -> None:
    """Write ``path`` until the disk has no byte left (a write that fits partly returns short, the next fails)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(descriptor)


def filling_first(method):
    def wrapper(*args, **kwargs):
        if not os.path.exists(os.environ["FILL_ON_PUBLISH"]):
            fill(os.environ["FILL_ON_PUBLISH"])
        return method(*args, **kwargs)

    return wrapper


MOMENT = os.environ.get("FILL_ON_PUBLISH_AT", "stage")
if MOMENT == "stage":
    ReportStore.stage = filling_first(ReportStore.stage)
elif MOMENT == "manifest":
    ReportStore._write_manifest = filling_first(ReportStore._write_manifest)
else:
    raise SystemExit(f"FILL_ON_PUBLISH_AT: stage or manifest, not {MOMENT!r}")

from flows.cli import app  # noqa: E402

app(prog_name="interp-audit")
