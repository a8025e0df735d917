"""The benchmark suite runs and reports every row. Nothing here is about
speed: CI proves the suite works (``--quick``), it never judges a figure."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness
from bench.suite import BENCHMARKS, BY_NAME

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_quick_suite_prints_and_writes_every_row(tmp_path):
    """`python -m bench --quick` exits 0, prints one table row per benchmark, and writes the JSON with
    figure, baseline (median, min, max, every sample), ratio and verdict for each; a row is left out only
    when its job is not in the checkout, and then says which module is missing."""
    out = tmp_path / "results.json"

    done = _bench("--quick", "--json", str(out))

    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["quick"] is True and document["repeat"] == 3
    assert {"cpu", "cores", "postgresql", "load_at_start", "load_at_end"} <= set(document["machine"])
    rows = document["rows"]
    assert [row["name"] for row in rows] == [b.name for b in BENCHMARKS]
    table_lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 2 + len(BENCHMARKS)  # header, rule, one line per row
    for row, line in zip(rows, table_lines[2:], strict=True):
        assert line.startswith(f"| {row['title']} |")
        if row["status"] == "not run":
            missing = row["reason"].split(" ")[0].rstrip(",")
            assert importlib.util.find_spec(missing) is None, f"{row['name']} was not run though {missing} exists"
            continue
        assert row["status"] == "ok", row
        for side in ("figure", "baseline"):
            stat = row[side]
            assert len(stat["samples"]) >= 3
            assert 0 < stat["min"] <= stat["median"] <= stat["max"]
        assert row["ratio"] > 0
        assert isinstance(row["met"], bool)
        assert ("| yes |" if row["met"] else "| **no** |") in line


def test_unknown_benchmark_name_is_a_usage_error():
    """`--only` with a name the suite does not have exits 2 and lists the known names, before starting anything."""
    done = _bench("--only", "presign,nonsense", timeout=60)

    assert done.returncode == 2
    assert "unknown benchmark 'nonsense'" in done.stderr
    assert "drain" in done.stderr


def test_list_names_every_benchmark():
    """`--list` prints each benchmark's name and target."""
    done = _bench("--list", timeout=60)

    assert done.returncode == 0
    assert [line.split()[0] for line in done.stdout.splitlines()] == list(BY_NAME)


def test_table_says_when_a_target_is_not_met():
    """A row that missed its target is marked **no** in the table, next to its figure: never hidden."""
    figure = harness.Stat.of([90_000.0, 95_000.0, 80_000.0], "URLs/s")
    baseline = harness.Stat.of([4_000.0, 4_100.0, 3_900.0], "URLs/s")
    measured = harness.Measured(title="presign", figure=figure, baseline=baseline, ratio=23.2,
                                ratio_text="23.2× faster", met=False, notes=("one thread",))
    missed = harness.Row(name="presign", title="presign", baseline_title="botocore", target="≥ 100,000/s",
                         status="ok", measured=measured)
    absent = harness.Row(name="import", title="initial import", baseline_title="executemany",
                         target="≥ 60,000 rows/s", status="not run", reason="trr_assets.sync is not in this checkout")

    text = harness.table([missed, absent])

    assert "| presign | 90,000 URLs/s (80,000–95,000) | botocore: 4,000 URLs/s (3,900–4,100) | 23.2× faster " \
           "| ≥ 100,000/s | **no** |" in text
    assert "| initial import | not run: trr_assets.sync is not in this checkout |" in text
    assert "- presign: one thread" in text
    assert figure.median == 90_000.0 and (figure.low, figure.high) == (80_000.0, 95_000.0)
