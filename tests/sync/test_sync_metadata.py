"""sync.metadata: rows from the listing alone ("listing"), completed later by
a "head" pass that HEADs only those rows and rewrites only what differs."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.postgres import make_show
from tests.support.s3 import TEST_BUCKET, make_settings
from tests.sync.helpers import HeadCounter, put, rows, run, show_key, versions
from trr_assets import metadata
from trr_assets.config import settings_from_mapping
from trr_assets.errors import ConfigError

OWNER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def _settings(db_url: str, mode: str) -> Any:
    return make_settings(db_url, s3={"list_shards": 2, "list_concurrency": 2, "head_concurrency": 4},
                         sync={"batch_size": 3, "metadata": mode})


def _pending(conn: Any) -> set[str]:
    return {r[0] for r in conn.execute("select object_key from trr_assets.heads_pending").fetchall()}


def test_content_type_guesses_come_from_the_extension_alone() -> None:
    assert metadata.guess_content_type("shows/x/photo.JPG") == "image/jpeg"
    assert metadata.guess_content_type("shows/x/clip.mp4") == "video/mp4"
    assert metadata.guess_content_type("shows/x/a.b/no-extension") is None
    assert metadata.guess_content_type("shows/x/archive.unknownext") is None


def test_listing_rows_then_a_head_pass_fills_only_what_the_listing_could_not_give(
    conn: Any, db_url: str, s3: Any
) -> None:
    """metadata = "listing": rows with size, checksum and show, the content type from the extension, no
    owner, and no HEAD at all. A "head" pass then HEADs just those rows: the ones whose type or owner
    differ are rewritten, the ones the guess got right are left untouched, rows imported with HEADs are
    neither HEADed nor touched; a further pass HEADs nothing."""
    show = make_show(conn)
    complete = show_key(show, "complete.png")
    put(s3, complete, b"c", content_type="image/png", owner=OWNER)
    heads = HeadCounter(s3)
    run(_settings(db_url, "head"), s3)  # a row made with its HEAD, before the listing import
    assert heads.count == 1

    right = show_key(show, "right.jpg")  # guessed right, no owner: nothing to fill
    wrong = show_key(show, "wrong.jpg")  # really a PNG
    owned = show_key(show, "owned.gif")  # guessed right, but has an owner
    bare = show_key(show, "no-extension")
    put(s3, right, b"r", content_type="image/jpeg")
    put(s3, wrong, b"w", content_type="image/png")
    put(s3, owned, b"o", content_type="image/gif", owner=OWNER)
    put(s3, bare, b"b", content_type="application/pdf")
    before = versions(conn)

    listed = run(_settings(db_url, "listing"), s3)

    assert heads.count == 1  # the listing pass HEADed nothing
    assert (listed.inserted, listed.unchanged, listed.failed) == (4, 1, [])
    got = rows(conn)
    assert {k: (v[3], v[4]) for k, v in got.items()} == {
        complete: ("image/png", uuid.UUID(OWNER)),
        right: ("image/jpeg", None),
        wrong: ("image/jpeg", None),
        owned: ("image/gif", None),
        bare: (None, None),
    }
    assert {k: v[1:3] for k, v in got.items() if k != complete} == {
        k: (len(body), etag) for k, body, etag in [
            (right, b"r", s3.head_object(Bucket=TEST_BUCKET, Key=right)["ETag"].strip('"')),
            (wrong, b"w", s3.head_object(Bucket=TEST_BUCKET, Key=wrong)["ETag"].strip('"')),
            (owned, b"o", s3.head_object(Bucket=TEST_BUCKET, Key=owned)["ETag"].strip('"')),
            (bare, b"b", s3.head_object(Bucket=TEST_BUCKET, Key=bare)["ETag"].strip('"')),
        ]}
    assert versions(conn)[complete] == before[complete]
    assert _pending(conn) == {right, wrong, owned, bare}
    heads.count = 0
    listed_versions = versions(conn)

    filled = run(_settings(db_url, "head"), s3)

    assert heads.count == 4  # the four listed rows, not the complete one
    assert (filled.inserted, filled.updated, filled.unchanged, filled.filled, filled.failed) == (0, 0, 5, 4, [])
    assert {k: (v[3], v[4]) for k, v in rows(conn).items()} == {
        complete: ("image/png", uuid.UUID(OWNER)),
        right: ("image/jpeg", None),
        wrong: ("image/png", None),
        owned: ("image/gif", uuid.UUID(OWNER)),
        bare: ("application/pdf", None),
    }
    after = versions(conn)
    assert after[complete] == listed_versions[complete] and after[right] == listed_versions[right]
    assert all(after[k] != listed_versions[k] for k in (wrong, owned, bare))
    assert _pending(conn) == set()

    heads.count = 0
    again = run(_settings(db_url, "head"), s3)
    assert (heads.count, again.filled, again.updated) == (0, 0, 0)


def test_a_changed_object_in_listing_mode_keeps_its_owner_and_is_filled_later(conn: Any, db_url: str, s3: Any) -> None:
    """A changed object's row gets the listing's size and checksum and keeps its owner id; the next
    "head" pass restores the content type S3 has."""
    show = make_show(conn)
    key = show_key(show, "photo.jpg")
    put(s3, key, b"one", content_type="image/webp", owner=OWNER)
    run(_settings(db_url, "head"), s3)
    etag = put(s3, key, b"two, longer", content_type="image/webp", owner=OWNER)

    changed = run(_settings(db_url, "listing"), s3)

    assert changed.updated == 1
    assert rows(conn)[key][1:] == (11, etag, "image/jpeg", uuid.UUID(OWNER))
    assert _pending(conn) == {key}
    run(_settings(db_url, "head"), s3)
    assert rows(conn)[key][1:] == (11, etag, "image/webp", uuid.UUID(OWNER))


def test_a_row_deleted_before_the_head_pass_leaves_nothing_behind(conn: Any, db_url: str, s3: Any) -> None:
    """The list of rows to HEAD forgets a row deleted meanwhile (TRUNCATE still works); the pass succeeds."""
    show = make_show(conn)
    for name in ("a.jpg", "b.jpg"):
        put(s3, show_key(show, name))
    run(_settings(db_url, "listing"), s3)
    conn.execute("delete from core.show_assets where object_key = %s", (show_key(show, "a.jpg"),))
    s3.delete_object(Bucket=TEST_BUCKET, Key=show_key(show, "a.jpg"))
    conn.execute("delete from trr_assets.delete_queue")

    report = run(_settings(db_url, "head"), s3)

    assert (report.filled, report.failed) == (1, [])
    assert _pending(conn) == set()
    conn.execute("truncate core.show_assets")


def test_sync_metadata_accepts_only_head_or_listing() -> None:
    with pytest.raises(ConfigError, match=r"sync\.metadata must be one of head, listing"):
        settings_from_mapping({"sync": {"metadata": "both"}})
