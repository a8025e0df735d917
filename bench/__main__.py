"""``python -m bench [--quick] [--only NAME]... [--repeat N] [--json PATH]``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import harness
from bench.env import Env, fake_aws_environment
from bench.suite import BENCHMARKS, BY_NAME

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure trr-assets' speed figures against their baselines, in one run.",
        epilog="benchmarks: " + ", ".join(BY_NAME),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced sizes: the whole suite in about two minutes (proves it works; figures not comparable)",
    )
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this benchmark (repeatable, or comma-separated)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="measured repetitions of each side, after a warm-up (default 3)")
    shown_json = DEFAULT_JSON.relative_to(Path.cwd()) if DEFAULT_JSON.is_relative_to(Path.cwd()) else DEFAULT_JSON
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help=f"where to write the results (default {shown_json})",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for b in BENCHMARKS:
            print(f"{b.name:10} {b.title}  [target: {b.target}]")
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    names = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BY_NAME)})")
    selected = [b for b in BENCHMARKS if not names or b.name in names]

    from trr_assets import logs

    fake_aws_environment()
    logs.configure(format="json", level="warning")  # the jobs' own logs: warnings and errors only
    started_at = dt.datetime.now(dt.timezone.utc)
    began = time.perf_counter()
    with Env() as env:
        info = harness.machine(env.server_version())
        ctx = harness.Context(env=env, quick=args.quick, repeat=args.repeat, say=harness.say)
        rows = [harness.run_benchmark(b, ctx) for b in selected]
    info["load_at_end"] = harness.load()
    print(harness.machine_line(info, quick=args.quick, repeat=args.repeat, when=started_at))
    print()
    print(harness.table(rows))
    document = {
        "started_at": started_at.isoformat(),
        "duration_seconds": round(time.perf_counter() - began, 1),
        "quick": args.quick,
        "repeat": args.repeat,
        "machine": info,
        "rows": [row.as_dict() for row in rows],
    }
    harness.write_json(args.json, document)
    harness.say(f"results written to {args.json}")
    return 1 if any(row.status == "error" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
