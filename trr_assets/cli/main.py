"""The ``trr-assets`` command line: the parser and the edge.

Exit codes (SPEC.md), decided here and nowhere else:
0 success; 1 failure at run time; 2 bad usage, argument or configuration;
3 ``reconcile --exit-code`` found drift; 4 ``reconcile --repair`` refused by
a safety limit. Errors are one line on stderr (a traceback only with
``--debug``); logs go to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import structlog

from trr_assets import __version__, logs
from trr_assets.cli import commands
from trr_assets.config import Settings, load_settings
from trr_assets.errors import ConfigError, TrrAssetsError, one_line
from trr_assets.runtime import tune_collector

log = structlog.get_logger()

Handler = Callable[[argparse.Namespace, Settings], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line, exit 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time like 2026-01-31T12:00:00Z, got {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trr-assets", description="Keep core.show_assets true to what is in S3.")
    parser.add_argument("--config", metavar="PATH",
                        help="TOML config file (default: $TRR_ASSETS_CONFIG, ./config.toml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"trr-assets {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("migrate", help="apply pending migrations")
    p.add_argument("--enable", action="append", default=[], metavar="NAME",
                   help="also apply an optional migration (org-read)")
    p.set_defaults(handler=commands.migrate)

    p = sub.add_parser("sync", help="one sync pass: S3 listing into core.show_assets")
    p.add_argument("--bucket", action="append", default=[], metavar="B",
                   help="bucket (repeatable; default: s3.buckets)")
    p.add_argument("--prefix", metavar="P", help="key prefix (default: s3.prefix)")
    p.add_argument("--inventory", metavar="s3://BUCKET/PATH/manifest.json",
                   help="read this S3 Inventory report (CSV, Parquet or ORC) instead of listing its bucket")
    p.set_defaults(handler=commands.sync)

    p = sub.add_parser("reconcile", help="report (or repair) drift between S3 and the rows")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="report only (the default)")
    mode.add_argument("--repair", action="store_true", help="apply the configured repair policies")
    p.add_argument("--bucket", action="append", default=[], metavar="B")
    p.add_argument("--prefix", metavar="P")
    p.add_argument("--grace-seconds", type=_positive_int, metavar="N")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--output", metavar="FILE", help="write the report here instead of stdout")
    p.add_argument("--exit-code", action="store_true", help="exit 3 when drift is found")
    p.add_argument("--force", action="store_true", help="override max_deletes and max_delete_fraction")
    p.add_argument("--inventory", metavar="s3://BUCKET/PATH/manifest.json",
                   help="read an S3 Inventory report instead of listing")
    p.add_argument("--history", action="store_true", help="print the recorded past runs")
    p.add_argument("--versions", action="store_true",
                   help="also list versions, delete markers and incomplete multipart uploads")
    p.set_defaults(handler=commands.reconcile)

    p = sub.add_parser("presign", help="print a presigned URL")
    p.add_argument("target", metavar="ASSET_ID|s3://BUCKET/KEY")
    p.add_argument("--method", choices=("get", "put"), default="get")
    p.add_argument("--expires", type=_positive_int, metavar="N", help="seconds (default: presign.expires_seconds)")
    p.set_defaults(handler=commands.presign)

    p = sub.add_parser("delete", help="delete asset rows and their objects")
    p.add_argument("asset_ids", nargs="+", metavar="ASSET_ID")
    p.set_defaults(handler=commands.delete)

    p = sub.add_parser("process-deletes", help="run the queued S3 deletions once")
    p.add_argument("--requeue-failed", action="store_true",
                   help="first make the failed deletions pending again (attempts from zero)")
    p.set_defaults(handler=commands.process_deletes)

    p = sub.add_parser("erasures", help="print the recorded deletions (proof of erasure) as JSON lines")
    p.add_argument("--bucket", metavar="B", help="only this bucket")
    p.add_argument("--key", metavar="K", help="only this object key (exactly)")
    p.add_argument("--since", type=_timestamp, metavar="T",
                   help="only deletions at or after T (ISO 8601; UTC when no offset is given)")
    p.set_defaults(handler=commands.erasures)

    p = sub.add_parser("listen", help="apply S3 Event Notifications from the SQS queues of events.queue_urls")
    p.add_argument("--once", action="store_true", help="stop when a receive comes back empty; print the counts")
    p.set_defaults(handler=commands.listen)

    p = sub.add_parser("worker", help="the daemon: sync, deletes, reconcile on their schedules")
    p.add_argument("--once", action="store_true", help="run each job once and exit")
    p.set_defaults(handler=commands.worker)

    p = sub.add_parser("demo", help="run everything on a throwaway PostgreSQL and local S3")
    p.add_argument("--keep", action="store_true", help="leave the servers running afterwards")
    p.set_defaults(handler=_demo, needs_settings=False)
    return parser


def _demo(args: argparse.Namespace, settings: Settings | None) -> int:
    from trr_assets.cli import demo

    return demo.run(main, keep=args.keep, debug=args.debug)


# --- the edge ------------------------------------------------------------------


def _check_schedule(settings: Settings) -> None:
    """The full cron check is APScheduler's; config only checks the shape."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(settings.reconcile.schedule, timezone="UTC")
    except ValueError as exc:
        raise ConfigError(f"config: reconcile.schedule is not a valid cron expression ({exc})") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trr-assets`` console script."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    tune_collector()
    debug = bool(args.debug)
    logs.configure(format="auto", level="debug" if debug else "info")
    try:
        settings: Settings | None = None
        if getattr(args, "needs_settings", True):
            settings = load_settings(args.config)
            _check_schedule(settings)
            logs.configure(
                format=settings.logging.format, level="debug" if debug else settings.logging.level
            )
        return int(args.handler(args, settings))
    except TrrAssetsError as exc:
        return _fail(exc, exc.exit_code, debug)
    except KeyboardInterrupt:
        sys.stderr.write("trr-assets: interrupted\n")
        return 130
    except BrokenPipeError:
        # `trr-assets reconcile | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: still one line unless --debug
        return _fail(exc, 1, debug, prefix=f"internal error: {type(exc).__name__}: ")


def _fail(exc: BaseException, code: int, debug: bool, prefix: str = "") -> int:
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    message = logs.scrub(prefix + one_line(exc))
    hint = "" if debug or code != 1 or not prefix else " (run with --debug for the traceback)"
    sys.stderr.write(f"trr-assets: error: {message}{hint}\n")
    return code
