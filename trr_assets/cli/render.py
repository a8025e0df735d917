"""Everything the CLI writes for a person or a program to read: JSON, the
reconcile reports (a text table or JSON lines), the run history, and the
one-line progress bars drawn on a terminal.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from trr_assets.errors import UsageError

if TYPE_CHECKING:  # importing the CLI stays cheap: reconcile (psycopg, boto3) loads with its command
    from trr_assets.reconcile import ReconcileSummary


def print_json(data: Any) -> None:
    """One JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def output(path: str | None, *, command: str) -> Iterator[TextIO]:
    """stdout, or the file ``path`` (``--output``)."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"{command}: cannot write --output {path}: {exc.strerror}") from exc
    with handle:
        yield handle


def json_lines(items: Iterable[dict[str, Any]]) -> None:
    """One JSON object a line on stdout, as they come."""
    for item in items:
        sys.stdout.write(json.dumps(item) + "\n")
    sys.stdout.flush()


# --- reconcile ---------------------------------------------------------------------


class JsonlReport:
    """One JSON object per line: each finding as it comes, then the summary."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def finding(self, item: dict[str, Any]) -> None:
        self.out.write(json.dumps(item) + "\n")

    def summary(self, summary: ReconcileSummary) -> None:
        self.out.write(json.dumps({"kind": "summary", **summary.as_dict()}) + "\n")


class TextReport:
    """A table of findings, written as they come, then the totals."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.rows = 0

    def finding(self, item: dict[str, Any]) -> None:
        if self.rows == 0:
            self.out.write(f"{'KIND':<16} {'ACTION':<12} {'SIZE':>12}  BUCKET/KEY  DETAIL\n")
        self.rows += 1
        size = "" if item.get("size") is None else str(item["size"])
        self.out.write(
            f"{item['kind']:<16} {item['action']:<12} {size:>12}  {item['bucket']}/{printable(item['key'])}  "
            f"{self._detail(item)}\n"
        )

    @staticmethod
    def _detail(item: dict[str, Any]) -> str:
        parts = []
        if item["kind"] == "orphaned_object":
            parts.append(f"modified {item['last_modified']}")
        elif item["kind"] == "orphaned_row":
            parts.append(f"asset {item['asset_id']}, updated {item['updated_at']}")
        elif item["kind"] in ("orphaned_versions", "lone_delete_marker"):
            parts.append(f"{item.get('versions', 0)} versions, {item['delete_markers']} delete markers, "
                         f"newest {item['last_modified']}")
        elif item["kind"] == "incomplete_upload":
            parts.append(f"upload {item['upload_id']}, started {item['initiated']}")
        else:
            parts.append(
                f"asset {item['asset_id']}: object {item['size']} bytes etag {item['etag']}, "
                f"row {item['row_size']} bytes etag {item['row_etag']}"
            )
        for name in ("reason", "quarantine_key", "error"):
            if item.get(name):
                parts.append(f"{name.replace('_', ' ')}: {item[name]}")
        return "; ".join(parts)

    def summary(self, summary: ReconcileSummary) -> None:
        from trr_assets.reconcile import REPAIR_COUNTS, SCAN_COUNTS

        if self.rows == 0:
            self.out.write("No findings.\n")
        mode = "dry run" if summary.dry_run else "repair"
        where = ", ".join(summary.buckets)
        self.out.write(f"\nReconcile ({mode}, from the {summary.source}) of {where} under {summary.prefix!r}:\n")
        names = SCAN_COUNTS if summary.dry_run else (*SCAN_COUNTS, *REPAIR_COUNTS)
        for name in names:
            self.out.write(f"  {name.replace('_', ' '):<18} {getattr(summary, name):>12,}\n")
        for name, value in summary.version_counts().items():  # --versions
            self.out.write(f"  {name.replace('_', ' '):<18} {value:>12,}\n")
        self.out.write(f"  {'duration':<18} {summary.duration_seconds:>11.1f}s\n")
        self.out.write("Drift found.\n" if summary.drift else "No drift.\n")
        for line in summary.refused:
            self.out.write(f"REFUSED: {line}\n")
        for line in summary.failed:
            self.out.write(f"FAILED: {line}\n")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(key: str) -> str:
    """A key on one table line: control characters (legal in S3 keys) escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", key)


def history_jsonl(runs: list[dict[str, Any]], out: TextIO) -> None:
    for r in runs:
        out.write(json.dumps(r, default=str) + "\n")


def history_text(runs: list[dict[str, Any]], out: TextIO) -> None:
    if not runs:
        out.write("No reconcile runs recorded yet.\n")
        return
    out.write(
        f"{'ID':>5}  {'STARTED':<20}  {'MODE':<7}  {'OUTCOME':<8}  {'OBJECTS':>9}  {'ROWS':>9}  "
        f"{'ORPH_OBJ':>8}  {'ORPH_ROW':>8}  {'MISMATCH':>8}  {'SECONDS':>7}  RUN BY\n"
    )
    for r in runs:
        c = r["counts"] or {}
        seconds = ""
        if r["finished_at"]:
            start = datetime.fromisoformat(r["started_at"])
            seconds = f"{(datetime.fromisoformat(r['finished_at']) - start).total_seconds():.1f}"
        out.write(
            f"{r['id']:>5}  {r['started_at'][:19]:<20}  {'dry-run' if r['dry_run'] else 'repair':<7}  "
            f"{r['outcome']:<8}  {c.get('objects_scanned', 0):>9}  {c.get('rows_scanned', 0):>9}  "
            f"{c.get('orphaned_objects', 0):>8}  {c.get('orphaned_rows', 0):>8}  {c.get('mismatched', 0):>8}  "
            f"{seconds:>7}  {r['run_by']}\n"
        )


# --- progress bars (scan.Progress) -------------------------------------------------


class SyncBar:
    """sync's one-line progress on a terminal, redrawn at most once a second."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._scanned = self._written = 0
        self._started = self._last = time.monotonic()

    def start(self, phase: str, units: int) -> None:
        pass

    def advance(self, *, keys: int = 0, written: int = 0, units_done: int = 0) -> None:
        with self._lock:
            self._scanned += keys
            self._written += written
            now = time.monotonic()
            if now - self._last >= 1.0:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        self._stream.write(
            f"\rsync: {self._scanned:,} keys scanned, {self._written:,} rows written,"
            f" {now - self._started:.0f}s "
        )
        self._stream.flush()

    def finish(self) -> None:
        """Draw the final figures and end the line."""
        with self._lock:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()


class ReconcileBar:
    """reconcile's one-line counter on a terminal, redrawn at most twice a second."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._keys = 0
        self._units_done = 0
        self._units = 0
        self._phase = ""
        self._drawn_at = 0.0

    def start(self, phase: str, units: int) -> None:
        with self._lock:
            self._phase, self._units, self._units_done, self._keys = phase, units, 0, 0
        self._draw(force=True)

    def advance(self, *, keys: int = 0, written: int = 0, units_done: int = 0) -> None:
        with self._lock:
            self._keys += keys
            self._units_done += units_done
        self._draw(force=bool(units_done))

    def finish(self) -> None:
        self._draw(force=True)
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._drawn_at < 0.5:
                return
            self._drawn_at = now
            line = f"\rreconcile {self._phase}: {self._keys:,} keys, {self._units_done}/{self._units} shards\x1b[K"
        self._stream.write(line)
        self._stream.flush()
