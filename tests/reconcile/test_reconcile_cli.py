"""trr-assets reconcile on the command line: formats, exit codes, history."""

from __future__ import annotations

import json

import pytest
import structlog

from tests.reconcile.helpers import add_row, plant, put, read_jsonl, row_keys, write_config
from tests.support.postgres import make_show
from trr_assets import cli


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli.main configures structlog for the process, onto this test's captured stderr: undo it after."""
    yield
    structlog.reset_defaults()


def test_jsonl_streams_findings_then_one_summary_line(conn, s3, db_url, tmp_path):
    """--format jsonl --output FILE: one finding per line with action none, then the summary as the last line."""
    p = plant(conn, s3)
    config = write_config(tmp_path / "c.toml", db_url)
    out = tmp_path / "report.jsonl"

    code = cli.main(["--config", str(config), "reconcile", "--dry-run", "--format", "jsonl", "--output", str(out)])

    lines = read_jsonl(out)
    assert code == 0
    assert [line["kind"] for line in lines[:-1]].count("orphaned_object") == len(p.orphaned_objects)
    assert {line["key"] for line in lines[:-1]} == set(p.orphaned_objects + p.orphaned_rows + p.mismatched)
    assert all(line["action"] == "none" for line in lines[:-1])
    summary = lines[-1]
    assert summary["kind"] == "summary" and summary["dry_run"] is True
    assert {k: summary[k] for k in ("orphaned_objects", "orphaned_rows", "mismatched", "pending_deletes")} == {
        "orphaned_objects": 2, "orphaned_rows": 1, "mismatched": 1, "pending_deletes": 2,
    }
    assert {"objects_scanned", "rows_scanned", "skipped_recent"} <= summary.keys()


def test_text_format_is_a_table_and_totals(conn, s3, db_url, tmp_path, capsys):
    """--format text (the default) prints one row per finding and the totals, on stdout."""
    p = plant(conn, s3)
    config = write_config(tmp_path / "c.toml", db_url)

    assert cli.main(["--config", str(config), "reconcile"]) == 0

    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[:3] == ["KIND", "ACTION", "SIZE"]
    for key in p.orphaned_objects + p.orphaned_rows + p.mismatched:
        assert key in text
    assert "orphaned objects" in text and "Drift found." in text


def test_exit_code_is_3_on_drift_and_0_when_clean(conn, s3, db_url, tmp_path, capsys):
    """--exit-code: 3 when drift is found, 0 once the bucket is clean."""
    show = make_show(conn)
    etag = put(s3, f"shows/{show}/a.jpg")
    config = write_config(tmp_path / "c.toml", db_url)
    args = ["--config", str(config), "reconcile", "--exit-code", "--format", "jsonl"]

    assert cli.main(args) == 3
    assert "drift found" in capsys.readouterr().err

    add_row(conn, show, f"shows/{show}/a.jpg", size=4, etag=etag)
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["drift"] is False


def test_refused_repair_exits_4_and_still_reports(conn, s3, db_url, tmp_path, capsys):
    """An empty bucket against 100 rows: exit 4, the limit named on stderr, the summary on stdout, no row deleted."""
    show = make_show(conn)
    for i in range(100):
        add_row(conn, show, f"shows/{show}/{i:03}.jpg", size=4, etag="x")
    config = write_config(tmp_path / "c.toml", db_url, reconcile={"orphaned_rows": "delete"})

    code = cli.main(["--config", str(config), "reconcile", "--repair", "--format", "jsonl"])

    captured = capsys.readouterr()
    assert code == 4
    assert "max_delete_fraction" in captured.err and len(captured.err.strip().splitlines()[-1]) > 0
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert lines[-1]["kind"] == "summary" and lines[-1]["refused"]
    assert {line["action"] for line in lines[:-1]} == {"refused"} and len(lines) == 101
    assert len(row_keys(conn)) == 100

    assert cli.main(["--config", str(config), "reconcile", "--repair", "--force", "--format", "jsonl"]) == 0
    assert row_keys(conn) == set()


def test_history_shows_past_runs(conn, s3, db_url, tmp_path, capsys):
    """Each run, dry or not, is recorded; --history prints them newest first (text, and jsonl)."""
    plant(conn, s3)
    config = write_config(tmp_path / "c.toml", db_url, reconcile={"max_delete_fraction": 1.0})
    base = ["--config", str(config), "reconcile"]
    assert cli.main([*base, "--format", "jsonl"]) == 0
    assert cli.main([*base, "--repair", "--format", "jsonl"]) == 0
    capsys.readouterr()

    assert cli.main([*base, "--history"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split()[:4] == ["ID", "STARTED", "MODE", "OUTCOME"]
    assert [line.split()[2:4] for line in text[1:]] == [["repair", "repaired"], ["dry-run", "drift"]]

    assert cli.main([*base, "--history", "--format", "jsonl"]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["dry_run"] for r in runs] == [False, True]
    assert runs[1]["counts"]["orphaned_objects"] == 2 and runs[1]["finished_at"]
    assert "@" in runs[0]["run_by"] and runs[0]["buckets"] == ["trr-test-assets"]


def test_history_cannot_be_combined_with_repair(conn, db_url, tmp_path, capsys, aws_env):
    """--history --repair is bad usage (exit 2)."""
    config = write_config(tmp_path / "c.toml", db_url)
    assert cli.main(["--config", str(config), "reconcile", "--history", "--repair"]) == 2


def test_text_report_keeps_each_finding_on_one_line():
    """A key with a newline (legal in S3) cannot break the text table: control characters are escaped."""
    import io

    from trr_assets.cli.render import TextReport

    out = io.StringIO()
    TextReport(out).finding({
        "kind": "orphaned_object", "bucket": "b", "key": "shows/evil\nkey.jpg", "size": 1,
        "etag": "e", "last_modified": "2026-11-26T00:00:00Z", "action": "none",
    })
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "shows/evil\\x0akey.jpg" in lines[1]
