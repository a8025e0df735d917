"""``trr-assets demo``: every planted finding in the report, a working URL, nothing left behind."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import clean_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

PLANTED = ("orphaned object", "orphaned row", "mismatch", "unattributable")


def _planted_keys(output: str) -> dict[str, str]:
    """The key of each planted drift, as the demo announced it."""
    found = {}
    for kind in PLANTED:
        match = re.search(rf"^  {kind}:\s+(\S+)", output, re.MULTILINE)
        assert match, f"the demo did not announce its {kind}:\n{output}"
        found[kind] = match.group(1)
    return found


def _section(output: str, title: str) -> str:
    start = output.index(f"== {title}\n")
    end = output.find("\n== ", start + 1)
    return output[start: end if end != -1 else len(output)]


def _workdir(output: str) -> Path:
    match = re.search(r"host=(/\S+?)/pgdata", output)
    assert match, output
    return Path(match.group(1))


def test_demo_exits_0_reports_every_planted_finding_fetches_a_url_and_cleans_up():
    result = subprocess.run([sys.executable, "-m", "trr_assets", "demo"], capture_output=True, text=True,
                            env=clean_env(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    report = _section(out, "$ trr-assets reconcile --dry-run")
    for kind, key in _planted_keys(out).items():
        assert key in report, f"the {kind} {key} is missing from the report:\n{report}"
    sync = json.loads(_section(out, "$ trr-assets sync").splitlines()[1])
    assert sync["skipped"] == 1  # the unattributable key
    assert re.search(r"GET -> HTTP 200, \d+ bytes, identical to the upload", out)
    assert "cleaned up" in out
    assert not _workdir(out).exists()


def test_demo_keep_leaves_servers_the_printed_settings_reach_and_ctrl_c_cleans_up(tmp_path):
    out_path = tmp_path / "demo.out"
    with out_path.open("w") as out_file:
        demo = subprocess.Popen([sys.executable, "-m", "trr_assets", "demo", "--keep"], stdout=out_file,
                                stderr=subprocess.STDOUT, env=clean_env(), text=True)
        try:
            wait_for(lambda: "Press Ctrl-C" in out_path.read_text() or demo.poll() is not None,
                       what="the demo to wait for Ctrl-C", timeout_seconds=300)
            out = out_path.read_text()
            assert demo.poll() is None, out
            exports = dict(re.findall(r"(TRR_ASSETS_CONFIG|AWS_[A-Z_]+)=(\S+)", out))
            assert set(exports) >= {"TRR_ASSETS_CONFIG", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
            reconcile = subprocess.run(
                [sys.executable, "-m", "trr_assets", "reconcile", "--dry-run", "--format", "jsonl"],
                capture_output=True, text=True, env=clean_env(**exports), timeout=120)
            assert reconcile.returncode == 0, reconcile.stderr
            kinds = {json.loads(line)["kind"] for line in reconcile.stdout.splitlines()}
            assert kinds == {"orphaned_object", "orphaned_row", "mismatch", "summary"}

            demo.send_signal(signal.SIGINT)
            assert demo.wait(60) == 0
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    out = out_path.read_text()
    assert "cleaned up" in out
    assert not _workdir(out).exists()
