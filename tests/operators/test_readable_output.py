"""Readable output: a short summary for a person on a terminal, JSON when
piped or asked for (scripts keep today's JSON), --quiet and --log-level,
and help text on every flag."""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET
from tests.sync.helpers import put, show_key
from trr_assets.cli import main
from trr_assets.cli.main import build_parser


def _parsers(parser: argparse.ArgumentParser, name: str = "trr-assets") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _parsers(sub, f"{name} {sub_name}")
    return found


def test_every_flag_and_argument_has_help_text() -> None:
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]
    assert missing == []


def test_sync_prints_json_when_piped_and_a_summary_when_asked(cli_env, s3, conn, capsys) -> None:
    show = make_show(conn)
    put(s3, show_key(show, "a.jpg"))
    put(s3, "shows/not-a-show/b.jpg")
    assert main(["sync"]) == 0
    report = json.loads(capsys.readouterr().out)  # piped: today's JSON, unchanged
    assert {k: report[k] for k in ("scanned", "inserted", "updated", "unchanged", "skipped")} == {
        "scanned": 2, "inserted": 1, "updated": 0, "unchanged": 0, "skipped": 1}
    assert main(["sync", "--format", "text"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("Sync: 2 objects listed in ")
    assert line.endswith(": 0 inserted, 0 updated, 1 unchanged, 1 skipped (no match 1).")


def test_delete_and_process_deletes_summaries(cli_env, s3, conn, capsys) -> None:
    show = make_show(conn)
    put(s3, show_key(show, "a.jpg"))
    assert main(["sync"]) == 0
    capsys.readouterr()
    [asset] = conn.execute("select id from core.show_assets").fetchone()
    missing = "00000000-0000-0000-0000-000000000009"
    assert main(["delete", str(asset), missing, "--format", "text"]) == 0
    assert capsys.readouterr().out.splitlines() == ["Deleted 1 row and 1 object.", f"  Not found: {missing}"]
    assert main(["process-deletes", "--format", "text"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Deleted 0 objects in ") and lines[-1] == "Queue now: 0 pending, 0 failed."
    assert main(["process-deletes", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["pending"] == 0


def test_on_a_terminal_the_default_is_the_summary(db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRR_ASSETS_", "AWS_"))}
    env.update(DATABASE_URL=db_url, TRR_ASSETS_S3_BUCKETS=TEST_BUCKET, AWS_ACCESS_KEY_ID="AKIATESTTESTTESTTEST",
               AWS_SECRET_ACCESS_KEY="x" * 20, AWS_CONFIG_FILE="/nonexistent",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "trr_assets", "--quiet", "process-deletes"], stdout=follower,
                              stderr=subprocess.PIPE, env=env, timeout=120)
        os.close(follower)
        follower = -1
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    text = output.decode().replace("\r\n", "\n")
    assert text.startswith("Deleted 0 objects in ") and "Queue now: 0 pending, 0 failed." in text
    assert proc.stderr == b""  # --quiet: no info lines


def test_quiet_and_log_level_choose_what_is_logged(cli_env, s3, capsys) -> None:
    assert main(["sync"]) == 0
    assert '"level": "info"' in capsys.readouterr().err
    assert main(["--quiet", "sync"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["--log-level", "warning", "sync"]) == 0
    assert '"level": "info"' not in capsys.readouterr().err
    assert main(["--log-level", "loud", "sync"]) == 2


