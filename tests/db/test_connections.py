"""How a pass opens its database connections: one first (it proves the
database answers), then the rest of those its running units need from their
start, together, not one after another (against a distant server each costs
round trips and a TLS handshake, and a pool that grows one connection at a
time would make a pass of 8 units wait for 8 in a row)."""

from __future__ import annotations

import pytest

from tests.reconcile.helpers import plant
from tests.reconcile.helpers import run as run_reconcile
from tests.support.far_database import far_database
from tests.support.postgres import make_show
from tests.support.s3 import make_settings
from tests.sync.helpers import put, rows, run, show_key, sync_settings

DELAY_SECONDS = 0.4  # each new connection is held this long before it reaches PostgreSQL
UNITS = 4


def test_sync_opens_the_readers_of_its_running_units_together(conn, db_url, s3):
    """A sync pass of 4 key ranges, 4 at a time, opens its 4 readers together, and still syncs."""
    show = make_show(conn)
    keys = {show_key(show, name) for name in ("a.jpg", "b.jpg")}
    for key in keys:
        put(s3, key)
    with far_database(db_url, delay_seconds=DELAY_SECONDS) as far:
        report = run(sync_settings(far.url, list_shards=UNITS, list_concurrency=UNITS), s3)
    assert report.failed == [] and report.inserted == 2
    assert set(rows(conn)) == keys
    assert far.most_held >= UNITS - 1  # after the first (one after another: 1)


def test_sync_opens_no_more_readers_than_it_has_units(conn, db_url, s3):
    """A pass of one key range with nothing to write opens one connection, whatever list_concurrency allows."""
    with far_database(db_url, delay_seconds=DELAY_SECONDS) as far:
        report = run(sync_settings(far.url, list_shards=1, list_concurrency=UNITS), s3)
    assert report.failed == [] and report.scanned == 0
    assert far.opened == 1


@pytest.mark.parametrize("repair", [False, True], ids=["dry-run", "repair"])
def test_reconcile_opens_the_connections_of_its_running_units_together(conn, db_url, s3, repair):
    """reconcile opens a reader per running unit together, and with --repair a writer each too."""
    plant(conn, s3)
    with far_database(db_url, delay_seconds=DELAY_SECONDS) as far:
        settings = make_settings(far.url, s3={"list_shards": UNITS, "list_concurrency": UNITS})
        _, summary = run_reconcile(settings, client=s3, repair=repair, force=True)
    assert summary.failed == [] and summary.refused == []
    connections = UNITS * (2 if repair else 1)
    assert far.most_held >= connections - 1  # after the first (one after another: 1)
