"""The shared sharded pass (scan.Scan): each bucket's first error, skipped units, stop requests, bugs."""

from __future__ import annotations

import threading

import pytest

from tests.support.s3 import make_settings
from trr_assets import scan
from trr_assets.errors import StorageError, TrrAssetsError, one_line
from trr_assets.scan import Scan, Unit


def _scan(db_url: str, buckets: list[str], units: list[Unit], **kwargs: object) -> Scan:
    # One worker: units run in order, so which ran after a failure is certain.
    settings = make_settings(db_url, s3={"list_shards": 4, "list_concurrency": 1})
    return Scan(settings, name="trr-assets test", buckets=buckets, unit_count=len(units), workers=1,
                per_unit=1, eager_per_unit=1, **kwargs)  # type: ignore[arg-type]


def _describe(bucket: str, exc: BaseException) -> str:
    return f"{bucket}: {one_line(exc)}"


def test_a_failed_bucket_keeps_its_first_error_and_skips_its_other_units(db_url):
    units = scan.units(["a", "b"], "shows/", 4)
    ran: list[Unit] = []

    def work(unit: Unit) -> None:
        ran.append(unit)
        if unit.bucket == "a" and len([u for u in ran if u.bucket == "a"]) == 2:
            raise StorageError("s3: list objects (bucket a): boom")

    with _scan(db_url, ["a", "b"], units) as pass_:
        pass_.run(units, work, phase="sync", fails_bucket=(TrrAssetsError,), describe=_describe)
        pass_.fail("a", "a later error is not kept")

        assert pass_.error("a") == "a: s3: list objects (bucket a): boom"
        assert pass_.failed("a") and not pass_.failed("b") and pass_.error("b") is None
    assert [u.bucket for u in ran] == ["a", "a", "b", "b", "b", "b"]  # a's last two ranges never ran


def test_a_stop_request_skips_every_unit_left_and_says_which(db_url):
    units = scan.units(["a"], "shows/", 4)
    stop = threading.Event()
    ran: list[Unit] = []
    stopped: list[Unit] = []

    def work(unit: Unit) -> None:
        ran.append(unit)
        stop.set()

    with _scan(db_url, ["a"], units, stop=stop) as pass_:
        pass_.run(units, work, phase="scan", fails_bucket=(TrrAssetsError,), describe=_describe,
                  when_stopped=stopped.append)
        assert pass_.stopping() and not pass_.failed("a")
    assert ran == units[:1] and stopped == units[1:]


def test_a_bug_is_raised_and_ends_the_pass(db_url):
    units = scan.units(["a"], "shows/", 4)
    ran: list[Unit] = []

    def work(unit: Unit) -> None:
        ran.append(unit)
        raise KeyError("not a bucket's failure")

    with _scan(db_url, ["a"], units) as pass_:
        with pytest.raises(KeyError):
            pass_.run(units, work, phase="scan", fails_bucket=(TrrAssetsError,), describe=_describe)
        assert pass_.stopping() and not pass_.failed("a")
    assert ran == units[:1]


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def start(self, phase: str, units: int) -> None:
        self.calls.append(("start", (phase, units)))

    def advance(self, *, keys: int = 0, written: int = 0, units_done: int = 0) -> None:
        self.calls.append(("advance", (keys, written, units_done)))

    def finish(self) -> None:
        self.calls.append(("finish", None))


def test_progress_hears_of_the_pass_and_each_unit_that_ran(db_url):
    units = scan.units(["a"], "shows/", 2)
    progress = _Recorder()

    with _scan(db_url, ["a"], units, progress=progress) as pass_:
        pass_.run(units, lambda unit: pass_.progress.advance(keys=10), phase="count",
                  fails_bucket=(TrrAssetsError,), describe=_describe)

    assert progress.calls == [
        ("start", ("count", 2)),
        ("advance", (10, 0, 0)), ("advance", (0, 0, 1)),
        ("advance", (10, 0, 0)), ("advance", (0, 0, 1)),
        ("finish", None),
    ]
