"""Parsing S3 Event Notifications (trr_assets.events): no I/O."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.events.helpers import body, record, s3_test_event, sns
from trr_assets import events
from trr_assets.errors import MessageError
from trr_assets.events import Kind

HEX = st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=24)


def _reference_newer(a: str, b: str) -> bool:
    # AWS's words, literally: pad the shorter with zeros on the right, compare as strings.
    if len(a) < len(b):
        a = a + "0" * (len(b) - len(a))
    elif len(b) < len(a):
        b = b + "0" * (len(a) - len(b))
    return a > b


@given(HEX, HEX)
@example("0055AED6DCD90281E5", "0055AED6DCD90281E4")
@example("1", "0FFFFFFFFF")
@example("A", "A0")
def test_sequencer_comparison_is_aws_rule(a: str, b: str) -> None:
    assert events.sequencer_newer(a, b) is _reference_newer(a, b)
    assert not (events.sequencer_newer(a, b) and events.sequencer_newer(b, a))


@given(HEX, HEX)
def test_sequencer_comparison_ignores_case(a: str, b: str) -> None:
    assert events.sequencer_newer(a.lower(), b) is events.sequencer_newer(a, b.lower())


@given(HEX, HEX, HEX)
def test_sequencer_comparison_is_transitive(a: str, b: str, c: str) -> None:
    if events.sequencer_newer(a, b) and events.sequencer_newer(b, c):
        assert events.sequencer_newer(a, c)


def test_equal_after_padding_is_not_newer() -> None:
    assert not events.sequencer_newer("AB", "AB000")
    assert not events.sequencer_newer("AB000", "AB")


KEY_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1, max_size=40
)


@given(KEY_TEXT)
@example("shows/a b+c%2B/x y.jpg")
def test_keys_round_trip_through_s3s_encoding(key: str) -> None:
    parsed = events.parse_message(body(record(key, "0A")))
    assert parsed.events[0].key == key


def test_plus_is_a_space_and_percent_2b_a_plus() -> None:
    parsed = events.parse_message(body(record("shows/a+b%2Bc", "0A", encode=False)))
    assert parsed.events[0].key == "shows/a b+c"


def test_s3_record_fields() -> None:
    when = datetime(2026, 12, 5, 1, 2, 3, 456000, tzinfo=timezone.utc)
    parsed = events.parse_message(body(record("shows/k", "0055aed6dcd90281e5", size=12, etag='"abc"', event_time=when)))
    (event,) = parsed.events
    assert event == events.Event(
        bucket="trr-test-assets", key="shows/k", sequencer="0055AED6DCD90281E5", name="ObjectCreated:Put",
        kind=Kind.CREATED, event_time=when, size=12, etag="abc",
    )
    assert not parsed.test_event


def test_removal_and_other_kinds() -> None:
    names = {
        "ObjectRemoved:Delete": Kind.REMOVED,
        "ObjectRemoved:DeleteMarkerCreated": Kind.REMOVED,
        "LifecycleExpiration:Delete": Kind.REMOVED,
        "ObjectCreated:CompleteMultipartUpload": Kind.CREATED,
        "ObjectCreated:Copy": Kind.CREATED,
        "ObjectTagging:Put": Kind.OTHER,
        "ObjectRestore:Completed": Kind.OTHER,
    }
    for name, kind in names.items():
        (event,) = events.parse_message(body(record("shows/k", "01", name=name))).events
        assert event.kind is kind, name
        if kind is Kind.REMOVED:
            assert event.size is None and event.etag is None


def test_sns_envelope_is_unwrapped() -> None:
    inner = body(record("shows/a", "01"), record("shows/b", "02"))
    assert events.parse_message(sns(inner)) == events.parse_message(inner)


def test_test_event_plain_and_wrapped() -> None:
    assert events.parse_message(s3_test_event()).test_event
    assert events.parse_message(sns(s3_test_event())).test_event


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "null",
        '{"Records": []}',
        '{"Records": [1]}',
        '{"Records": [{"eventName": "ObjectCreated:Put"}]}',
        json.dumps({"Type": "Notification", "Message": {"Records": []}}),
        json.dumps({"Type": "Notification", "Message": "{{"}),
        body({**record("shows/k", "01"), "s3": {"bucket": {"name": "b"}, "object": {"sequencer": "01"}}}),
        body({**record("shows/k", "01"), "s3": {"object": {"key": "k", "sequencer": "01"}}}),
        body(record("shows/k", "not-hex")),
        body(record("%FF%FE", "01", encode=False)),
    ],
)
def test_garbage_is_one_line_message_error(text: str) -> None:
    with pytest.raises(MessageError) as caught:
        events.parse_message(text)
    assert "\n" not in str(caught.value) and str(caught.value)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_message_error(text: str) -> None:
    try:
        events.parse_message(text)
    except MessageError:
        pass


EVENT_LISTS = st.lists(
    st.tuples(st.sampled_from(["shows/a", "shows/b", "shows/c"]), HEX), min_size=1, max_size=30
)


@given(EVENT_LISTS, st.randoms())
def test_newest_per_key_keeps_the_newest_in_any_order(items: list[tuple[str, str]], rnd: object) -> None:
    built = [events.parse_message(body(record(k, s))).events[0] for k, s in items]
    shuffled = list(built)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    newest, dropped = events.newest_per_key(shuffled)
    assert dropped == len(built) - len(newest)
    assert [(e.bucket, e.key) for e in newest] == sorted({(e.bucket, e.key) for e in built})
    for event in newest:
        same_key = [e for e in built if e.key == event.key]
        assert not any(events.sequencer_newer(e.sequencer, event.sequencer) for e in same_key)


def test_records_without_a_sequencer_are_unordered() -> None:
    """Some S3-compatible stores (and moto) send no sequencer: the last such
    record of a key wins, and a sequenced record wins over any of them."""
    plain = events.parse_message(body({**record("shows/k", "01"), "s3": {
        "bucket": {"name": "trr-test-assets"}, "object": {"key": "shows/k", "size": 1, "eTag": "e"}}}))
    (unordered,) = plain.events
    assert unordered.sequencer == ""
    removal = events.Event(**{**unordered.__dict__, "name": "ObjectRemoved:Delete", "kind": Kind.REMOVED})
    assert events.newest_per_key([unordered, removal]) == ([removal], 1)
    assert events.newest_per_key([removal, unordered]) == ([unordered], 1)
    (sequenced,) = events.parse_message(body(record("shows/k", "01"))).events
    assert events.newest_per_key([sequenced, unordered]) == ([sequenced], 1)
    assert events.newest_per_key([unordered, sequenced]) == ([sequenced], 1)
