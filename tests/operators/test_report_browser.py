"""The HTML report in a real browser: headless Chromium opens the file from
disk with the network cut, renders it without a console error, and the
screenshot is a picture, not a blank page. .ci/run installs Chromium
(Debian's package) when it is missing."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.operators.helpers import run, seed_report

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
    # Any fetch the page tried would fail: the page must not need one.
    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("Chromium is needed for this test: apt-get install chromium (.ci/run does)")


def _browser(page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             *extra, page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )


@pytest.mark.slow
def test_the_report_renders_in_chromium_without_script_errors(cli_env, conn, capsys, tmp_path: Path) -> None:
    seed_report(conn)
    page = tmp_path / "drift.html"
    assert run(capsys, "report", "--output", str(page))[0] == 0

    dom = _browser(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<svg" in dom.stdout and "Recent job runs" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console

    shot = tmp_path / "drift.png"
    result = _browser(page, f"--screenshot={shot}", "--window-size=1000,1400")
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 1400)
    assert len(data) > 20_000, "the screenshot is (nearly) blank"
