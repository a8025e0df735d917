"""One handler per subcommand: call the job, render its report, say how it ended.

A handler returns 0, or raises: a job's partial failure reaches ``main`` as
``PartialFailure`` (raised by the job, or here by ``check`` from the
report's ``failures``), after its report has been rendered; ``main`` turns
every error into its exit code and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import TYPE_CHECKING

from trr_assets.cli import render
from trr_assets.config import SIGV4_MAX_EXPIRES_SECONDS, Settings
from trr_assets.errors import DriftFound, PartialFailure, Summary, UsageError

if TYPE_CHECKING:
    from trr_assets.scan import Progress


def check(summary: Summary, *, prefix: str = "") -> int:
    """0 when the job's report lists no failure; else raise ``PartialFailure``."""
    if summary.failures:
        raise PartialFailure(prefix + "; ".join(summary.failures), summary)
    return 0


def _terminal() -> bool:
    return sys.stderr.isatty()


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    from trr_assets import db

    applied = db.migrate(settings.database, enable=args.enable)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("nothing to apply: the database is up to date")
    return 0


def sync(args: argparse.Namespace, settings: Settings) -> int:
    from trr_assets import sync as job

    progress: Progress | None = render.SyncBar(sys.stderr) if _terminal() else None
    report = job.run(settings, buckets=args.bucket or None, prefix=args.prefix, progress=progress,
                     inventory=args.inventory)
    render.print_json(report.as_dict())
    return check(report, prefix="sync: ")


def reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """Report (jsonl or text), history, exit codes."""
    from trr_assets import reconcile as job

    if args.history:
        if args.repair or args.inventory:
            raise UsageError("reconcile: --history only prints past runs; drop --repair and --inventory")
        with render.output(args.output, command="reconcile") as out:
            runs = job.history.recent_runs(settings)
            (render.history_jsonl if args.format == "jsonl" else render.history_text)(runs, out)
        return 0
    options = job.ReconcileOptions(
        repair=bool(args.repair),
        buckets=args.bucket or None,
        prefix=args.prefix,
        grace_seconds=args.grace_seconds,
        force=bool(args.force),
        inventory=args.inventory,
        versions=bool(args.versions),
    )
    if options.versions and options.inventory:
        raise UsageError("reconcile: --versions lists the bucket; it does not go with --inventory")
    progress: Progress | None = render.ReconcileBar(sys.stderr) if _terminal() else None
    with render.output(args.output, command="reconcile") as out:
        report = render.JsonlReport(out) if args.format == "jsonl" else render.TextReport(out)
        try:
            summary = job.run(settings, options, sink=report.finding, progress=progress)
        except PartialFailure as exc:
            report.summary(exc.summary)  # type: ignore[arg-type]
            raise
        report.summary(summary)
    if args.exit_code and summary.drift:
        raise DriftFound(
            f"reconcile: drift found: {summary.orphaned_objects} orphaned objects, "
            f"{summary.orphaned_rows} orphaned rows, {summary.mismatched} mismatched, "
            f"{summary.failed_deletes} failed deletions"
        )
    return 0


def presign(args: argparse.Namespace, settings: Settings) -> int:
    """Print the URL of ``args.target``: an asset id (looked up as the
    service; no row is ``AssetNotFound``, exit 1) or ``s3://BUCKET/KEY``
    (signed as is). Bad arguments are ``UsageError`` (exit 2)."""
    from trr_assets.presign import Presigner

    target, expires = args.target, args.expires
    if expires is not None and not 1 <= expires <= SIGV4_MAX_EXPIRES_SECONDS:
        raise UsageError(f"presign: --expires must be between 1 and {SIGV4_MAX_EXPIRES_SECONDS}, got {expires}")
    asset_id: uuid.UUID | None = None
    if target.startswith("s3://"):
        bucket, _, key = target[len("s3://") :].partition("/")
        if not bucket or not key:
            raise UsageError(f"presign: {target!r} is not s3://BUCKET/KEY")
    else:
        try:
            asset_id = uuid.UUID(target)
        except ValueError:
            raise UsageError(f"presign: {target!r} is neither an asset id (a UUID) nor s3://BUCKET/KEY") from None
    with Presigner(settings) as presigner:
        if asset_id is not None:
            bucket, key = presigner.locate(asset_id)
        print(presigner.url_for_key(bucket, key, args.method, expires))
    return 0


def delete(args: argparse.Namespace, settings: Settings) -> int:
    """Unknown ids are listed in ``not_found`` (exit 0). Objects not deleted
    yet (S3 refused, or another drain holds them) stay queued, exit 1."""
    from trr_assets import deletes

    report = deletes.delete_assets(settings, args.asset_ids)
    render.print_json(report.as_dict())
    return check(report)


def process_deletes(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 1 when S3 refused deletions during this run (they stay queued)."""
    from trr_assets import deletes

    requeued = deletes.requeue_failed(settings) if args.requeue_failed else None
    report = deletes.drain(settings)
    result = report.as_dict()
    if requeued is not None:
        result["requeued"] = requeued
    render.print_json(result)
    return check(report)


def erasures(args: argparse.Namespace, settings: Settings) -> int:
    """The erasure record as JSON lines, oldest first."""
    from trr_assets import db
    from trr_assets import erasures as record

    with db.connect(settings.database, autocommit=True) as conn:
        render.json_lines(record.listed(conn, bucket=args.bucket, key=args.key, since=args.since))
    return 0


def listen(args: argparse.Namespace, settings: Settings) -> int:
    """Until SIGTERM or SIGINT (the batch being applied is finished, messages
    not applied yet go back to the queue), or with ``--once`` until the
    queues are empty. Prints the counts; exit 1 when a receive or a batch failed."""
    import signal
    import threading

    from trr_assets import listen as job

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = job.run(settings, once=args.once, stop=stop)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    render.print_json(report.as_dict())
    return check(report, prefix="listen: ")


def worker(args: argparse.Namespace, settings: Settings) -> int:
    from trr_assets import worker as daemon

    return daemon.run(settings, once=args.once)

