"""Measuring, and reporting what was measured.

A benchmark measures its figure and its baseline in the same run, on the
same data, after a warm-up, ``repeat`` times each (interleaved, so a noisy
moment hits both sides alike), and reports each side as the median with its
spread (min-max). The table says for each row whether the target was met;
a target that was not met is reported, not hidden: the figure is the
deliverable.
"""

from __future__ import annotations

import datetime as dt
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from bench.env import Env

T = TypeVar("T")


# --- numbers -----------------------------------------------------------------


def number(value: float) -> str:
    """A figure as a person reads it: 123,456 / 45.6 / 3.21 / 0.0123."""
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def megabytes(value: float) -> str:
    return f"{value / 1e6:,.1f} MB" if value >= 1e5 else f"{value / 1e3:,.1f} kB"


@dataclass(frozen=True)
class Stat:
    """Repeated measurements of one quantity: median and spread."""

    median: float
    low: float
    high: float
    unit: str
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float], unit: str) -> Stat:
        if not samples:
            raise ValueError("no samples")
        return cls(statistics.median(samples), min(samples), max(samples), unit, tuple(samples))

    def text(self) -> str:
        return f"{number(self.median)} {self.unit} ({number(self.low)}–{number(self.high)})"

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "unit": self.unit,
                "samples": list(self.samples)}


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


# --- rows --------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """What a benchmark's run returns."""

    title: str  # the row's title, with the sizes actually used
    figure: Stat
    baseline: Stat
    ratio: float
    ratio_text: str  # e.g. "37.2× faster", "1.12× the listing's time"
    met: bool
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    baseline_title: str | None = None  # when the sizes used differ from the benchmark's own title


@dataclass(frozen=True)
class Context:
    env: Env
    quick: bool
    repeat: int
    say: Callable[[str], None]  # progress, to stderr

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # with the full sizes
    baseline_title: str
    target: str
    needs: tuple[str, ...]  # modules that must be importable (the job under test)
    run: Callable[[Context], Measured]
    # Whose process it measures: the trr-assets command's (the garbage
    # collector tuned by runtime.tune_collector), or a web server's that imports
    # the presigner (CPython's defaults). Both sides of a row run alike.
    command_process: bool = True

    def missing(self) -> list[str]:
        return [module for module in self.needs if importlib.util.find_spec(module) is None]


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    baseline_title: str
    target: str
    status: str  # "ok", "not run" or "error"
    measured: Measured | None = None
    reason: str = ""
    seconds: float = 0.0

    @property
    def met_text(self) -> str:
        if self.measured is None:
            return self.status
        return "yes" if self.measured.met else "**no**"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "baseline_title": self.baseline_title,
            "target": self.target,
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 2),
        }
        m = self.measured
        if m is not None:
            out.update(
                figure=m.figure.as_dict(),
                baseline=m.baseline.as_dict(),
                ratio=m.ratio,
                ratio_text=m.ratio_text,
                met=m.met,
                notes=list(m.notes),
                extra=m.extra,
            )
        return out


CPYTHON_COLLECTOR_THRESHOLDS = (700, 10, 10)


@contextmanager
def _collector(*, tuned: bool) -> Iterator[None]:
    """The garbage collector as the measured process would have it."""
    from trr_assets.runtime import tune_collector

    saved = gc.get_threshold()
    gc.set_threshold(*CPYTHON_COLLECTOR_THRESHOLDS)
    if tuned:
        tune_collector()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def run_benchmark(benchmark: Benchmark, ctx: Context) -> Row:
    def row(title: str, status: str, *, baseline_title: str | None = None, **outcome: Any) -> Row:
        return Row(name=benchmark.name, title=title, baseline_title=baseline_title or benchmark.baseline_title,
                   target=benchmark.target, status=status, **outcome)

    missing = benchmark.missing()
    if missing:
        reason = f"{', '.join(missing)} is not in this checkout"
        ctx.say(f"{benchmark.name}: not run ({reason})")
        return row(benchmark.title, "not run", reason=reason)
    ctx.say(f"{benchmark.name}: {benchmark.title}")
    started = time.perf_counter()
    try:
        with _collector(tuned=benchmark.command_process):
            measured = benchmark.run(ctx)
    except Exception as exc:  # one broken row must not lose the others
        seconds = time.perf_counter() - started
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ctx.say(f"{benchmark.name}: error after {seconds:.1f} s: {reason}")
        return row(benchmark.title, "error", reason=reason, seconds=seconds)
    seconds = time.perf_counter() - started
    ctx.say(f"{benchmark.name}: {measured.figure.text()} vs {measured.baseline.text()} ({seconds:.1f} s)")
    return row(measured.title, "ok", baseline_title=measured.baseline_title, measured=measured, seconds=seconds)


# --- the machine ---------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "?"


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "?"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def machine(postgres: str) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory": _memory(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "packages": {name: _version(name) for name in ("boto3", "botocore", "psycopg", "moto", "pgserver")},
        "commit": _git_commit(),
        "load_at_start": load(),
    }


# --- the report ----------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    """The results as one Markdown table, then notes, one line each."""
    lines = [
        "| benchmark | figure: median (min–max) | baseline in the same run: median (min–max) | ratio | target | met? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    notes: list[str] = []
    for row in rows:
        m = row.measured
        if m is None:
            lines.append(f"| {row.title} | {row.status}: {row.reason} | {row.baseline_title} | | {row.target} "
                         f"| {row.met_text} |")
            continue
        lines.append(
            f"| {row.title} | {m.figure.text()} | {row.baseline_title}: {m.baseline.text()} | {m.ratio_text} "
            f"| {row.target} | {row.met_text} |"
        )
        notes.extend(f"- {row.name}: {note}" for note in m.notes)
    return "\n".join(lines + ([""] + notes if notes else []))


def machine_line(info: dict[str, Any], *, quick: bool, repeat: int, when: dt.datetime) -> str:
    return (
        f"Run {when:%Y-%m-%d %H:%M} UTC{' (--quick)' if quick else ''}, {repeat} repetitions, on {info['cpu']}, "
        f"{info['cores']} cores, {info['memory']}, {info['os']}, Python {info['python']}, "
        f"PostgreSQL {info['postgresql']} (pgserver), moto {info['packages']['moto']}; "
        f"load average {info['load_at_start']} at the start, {info.get('load_at_end', '?')} at the end."
    )


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
