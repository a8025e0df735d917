"""Sync end to end, as a user runs it, against an S3 that answers every
request 20 ms late.

Each measured pass is ``trr-assets sync`` in a process of its own (the
installed command, configured by environment variables), against
``bench.s3_standin`` (a process of its own that holds the objects of
``bench.data`` and spends next to no CPU) and a fresh clone of a database
holding the shows (initial import) or the shows and the imported rows
(no-op re-sync). The figure is objects per second of wall time, with the
command's CPU seconds (user + system, from ``wait4``) beside it; the
stand-in's counts say how many listings and HEADs the pass made.

Each row's baseline, in the same run, is the HEAD path of before
(``BASELINE_ENV``); a row that measures an option of sync (``metadata =
"listing"``) reuses the baseline its size already measured in this run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import data
from bench.harness import Benchmark, Context, Measured, Stat, number
from bench.importing import PER_SHOW, imported_template, shows_template

DELAY_SECONDS = 0.02
BUCKET = data.BUCKET

# The HEAD path before this round: botocore's HEADs, a thread each, 16 at once.
BASELINE_ENV: dict[str, str] = {"TRR_ASSETS_S3_HEAD_CLIENT": "botocore"}


@dataclass(frozen=True)
class Pass:
    """One ``trr-assets sync`` process."""

    seconds: float
    cpu_seconds: float
    report: dict[str, Any]
    requests: dict[str, int]  # by kind, as the stand-in counted them
    server_cpu_seconds: float


class StandIn:
    """A ``bench.s3_standin`` process holding ``objects`` objects."""

    def __init__(self, objects: int, *, delay: float = DELAY_SECONDS, versions_per_key: int = 1) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.s3_standin", "--objects", str(objects), "--delay", str(delay),
             "--versions-per-key", str(versions_per_key)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("bench: the S3 stand-in did not start")
        self.endpoint: str = json.loads(line)["endpoint"]

    def stats(self, *, reset: bool = False) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.endpoint}/__bench/{'reset' if reset else 'stats'}",
                                         method="POST" if reset else "GET")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def command() -> list[str]:
    """``trr-assets`` as installed beside this interpreter (else on PATH)."""
    beside = Path(sys.executable).parent / "trr-assets"
    found = str(beside) if beside.exists() else shutil.which("trr-assets")
    if not found:
        raise RuntimeError("bench: the trr-assets command is not installed")
    return [found]


def run_sync(stand_in: StandIn, url: str, extra_env: Mapping[str, str]) -> Pass:
    """``trr-assets sync`` once against ``stand_in`` and the database at ``url``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TRR_ASSETS_")},
        "DATABASE_URL": url,
        "TRR_ASSETS_S3_ENDPOINT_URL": stand_in.endpoint,
        "TRR_ASSETS_S3_ADDRESSING_STYLE": "path",
        "TRR_ASSETS_S3_BUCKETS": BUCKET,
        "TRR_ASSETS_S3_PREFIX": data.PREFIX,
        "TRR_ASSETS_LOGGING_FORMAT": "json",
        "TRR_ASSETS_LOGGING_LEVEL": "warning",
        **extra_env,
    }
    before = stand_in.stats(reset=True)
    # The children's CPU totals grow by what each reaped child used: between
    # these two readings, the sync process is the only one reaped.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen([*command(), "sync"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage = reaped.ru_utime + reaped.ru_stime - children.ru_utime - children.ru_stime
    after = stand_in.stats()
    if process.returncode != 0:
        raise RuntimeError(f"trr-assets sync exited {process.returncode}: {err.decode()[-500:]}")
    report = json.loads(out)
    return Pass(seconds, usage, report, after["requests"], after["cpu_seconds"] - before["cpu_seconds"])


# One baseline per size and run, shared by the rows that compare against it.
_baselines: dict[int, list[Pass]] = {}


def _check_import(p: Pass, n: int) -> None:
    if p.report.get("inserted") != n or p.report.get("failed"):
        raise RuntimeError(f"the import wrote {p.report.get('inserted')} of {n} rows: {p.report}")


def _cpu_per_object(passes: list[Pass], n: int) -> Stat:
    return Stat.of([p.cpu_seconds / n * 1e6 for p in passes], "µs")


def _describe(passes: list[Pass], n: int) -> str:
    rate = Stat.of([n / p.seconds for p in passes], "objects/s")
    cpu = Stat.of([p.cpu_seconds for p in passes], "s")
    heads = max(p.requests.get("head", 0) for p in passes)
    lists = max(p.requests.get("list", 0) for p in passes)
    server = Stat.of([p.server_cpu_seconds for p in passes], "s")
    per_object = _cpu_per_object(passes, n)
    return (f"{rate.text()}, client CPU {cpu.text()} ({per_object.text()} per object: one core's worth of it "
            f"would carry {number(1e6 / per_object.median)} objects/s), {lists:,} listings and {heads:,} HEADs per "
            f"pass, stand-in CPU {server.text()}")


def _import_passes(ctx: Context, n: int, extra_env: Mapping[str, str], reps: int) -> list[Pass]:
    template = shows_template(ctx, data.show_ids(n // PER_SHOW))
    passes = []
    with StandIn(n) as stand_in:
        for _ in range(reps):
            with ctx.env.database(template) as url:
                p = run_sync(stand_in, url, extra_env)
            _check_import(p, n)
            passes.append(p)
    return passes


def import_row(*, full: int, quick: int, figure_env: Mapping[str, str], what: str, target: float,
               baseline_reps_full: int | None = None) -> Any:
    def run(ctx: Context) -> Measured:
        n = ctx.size(full, quick)
        reps = ctx.repeat
        # Warm-up: the templates and the command's first start (imports, .pyc).
        _import_passes(ctx, max(PER_SHOW, n // 20), figure_env, 1)
        figure = _import_passes(ctx, n, figure_env, reps)
        if n not in _baselines:
            base_reps = reps if ctx.quick or baseline_reps_full is None else min(reps, baseline_reps_full)
            _baselines[n] = _import_passes(ctx, n, BASELINE_ENV, base_reps)
        baseline = _baselines[n]
        fig = Stat.of([n / p.seconds for p in figure], "objects/s")
        base = Stat.of([n / p.seconds for p in baseline], "objects/s")
        ratio = fig.median / base.median
        return Measured(
            title=f"initial import end to end, {n:,} objects, {what}, objects/s",
            figure=fig, baseline=base, ratio=ratio, ratio_text=f"{number(ratio)}× faster",
            met=fig.median >= target,
            notes=(f"`trr-assets sync` as a process against bench.s3_standin ({DELAY_SECONDS * 1000:.0f} ms per "
                   f"request) into an empty clone holding {n // PER_SHOW:,} shows: {_describe(figure, n)}.",
                   f"baseline (botocore HEADs, {len(baseline)} pass(es)): {_describe(baseline, n)}.",
                   f"settings: {dict(figure_env) or 'defaults'}; baseline: {BASELINE_ENV or 'defaults'}."),
            extra={"objects": n, "cpu_us_per_object": _cpu_per_object(figure, n).as_dict(),
                   "baseline_cpu_us_per_object": _cpu_per_object(baseline, n).as_dict(),
                   "requests": figure[-1].requests, "baseline_requests": baseline[-1].requests},
            baseline_title=f"the same, HEADs by botocore ({len(baseline)} pass(es))",
        )

    return run


def run_resync(ctx: Context) -> Measured:
    n = ctx.size(200_000, 2_000)
    template = imported_template(ctx, data.show_ids(n // PER_SHOW))
    figure: list[Pass] = []
    baseline: list[Pass] = []
    with StandIn(n) as stand_in:
        with ctx.env.database(template) as url:
            run_sync(stand_in, url, {})  # warm-up
        for _ in range(ctx.repeat):
            for side, env in ((figure, {}), (baseline, BASELINE_ENV)):
                with ctx.env.database(template) as url:
                    p = run_sync(stand_in, url, env)
                if p.report.get("scanned") != n or p.report.get("inserted") or p.report.get("updated") \
                        or p.report.get("failed"):
                    raise RuntimeError(f"the no-op re-sync changed something: {p.report}")
                side.append(p)
    fig = Stat.of([n / p.seconds for p in figure], "objects/s")
    base = Stat.of([n / p.seconds for p in baseline], "objects/s")
    ratio = fig.median / base.median
    heads = max(p.requests.get("head", 0) for p in figure)
    written = max(p.report.get("inserted", 0) + p.report.get("updated", 0) for p in figure)
    return Measured(
        title=f"no-op re-sync end to end, {n:,} objects, objects/s; rows written; HEADs",
        figure=fig, baseline=base, ratio=ratio,
        ratio_text=f"{number(ratio)}×; {written} rows written, {heads} HEADs",
        met=fig.median >= 30_000 and heads == 0 and written == 0,
        notes=(f"`trr-assets sync` as a process against bench.s3_standin ({DELAY_SECONDS * 1000:.0f} ms per "
               f"request), every object already a row: {_describe(figure, n)}.",
               f"baseline (botocore HEAD path): {_describe(baseline, n)}."),
        extra={"objects": n, "rows_written": written, "heads": heads,
               "cpu_us_per_object": _cpu_per_object(figure, n).as_dict()},
        baseline_title="the same, HEADs by botocore",
    )


def _import_benchmark(name: str, full: int, quick: int, what: str, env: dict[str, str], target: int) -> Benchmark:
    big = full > 20_000  # its baseline is one pass: at botocore's pace, several minutes each
    return Benchmark(
        name=name,
        title=f"initial import end to end, {full:,} objects, {what}, objects/s",
        baseline_title=f"the same, HEADs by botocore{' (one pass)' if big else ''}",
        target=f"≥ {target:,} objects/s",
        needs=("trr_assets.metadata",),
        run=import_row(full=full, quick=quick, figure_env=env, what=what, target=target,
                       baseline_reps_full=1 if big else None),
    )


_LISTING = {"TRR_ASSETS_SYNC_METADATA": "listing"}
E2E_IMPORT = _import_benchmark("e2e-import", 20_000, 2_000, "metadata = head", {}, 5_000)
E2E_IMPORT_BIG = _import_benchmark("e2e-import-200k", 200_000, 2_000, "metadata = head", {}, 5_000)
E2E_IMPORT_LISTING = _import_benchmark("e2e-import-listing", 20_000, 2_000, "metadata = listing", _LISTING, 20_000)
E2E_IMPORT_LISTING_BIG = _import_benchmark("e2e-import-listing-200k", 200_000, 2_000, "metadata = listing",
                                           _LISTING, 20_000)

E2E_RESYNC = Benchmark(
    name="e2e-resync",
    title="no-op re-sync end to end, 200,000 objects, objects/s; rows written; HEADs",
    baseline_title="the same, HEADs by botocore",
    target="≥ 30,000 objects/s, 0 rows written, 0 HEADs",
    needs=("trr_assets.sync",),
    run=run_resync,
)
