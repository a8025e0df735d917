"""The fast ListObjectsV2 page parser: botocore's own parser is the oracle.

``storage.make_client`` parses listing pages itself (see ``storage``); these
tests prove it gives exactly botocore's answer, page by page and through a
real client, and that anything it is unsure of still reaches botocore.
"""

from __future__ import annotations

import string
from typing import Any
from xml.sax.saxutils import escape

import boto3
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.s3 import TEST_BUCKET, make_settings
from tests.support.s3_faults import RawBody
from trr_assets import storage
from trr_assets.storage import listing_parser

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _botocore() -> tuple[Any, Any]:
    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=storage.parse_timestamp)
    shape = core.get_service_model("s3").operation_model("ListObjectsV2").output_shape
    return core.get_component("response_parser_factory").create_parser("rest-xml"), shape


ORACLE, SHAPE = _botocore()
OPERATION = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2")


def botocore_parse(body: bytes) -> dict[str, Any]:
    parsed = ORACLE.parse({"status_code": 200, "headers": {}, "body": body}, SHAPE)
    parsed.pop("ResponseMetadata", None)
    return parsed  # type: ignore[no-any-return]


def _listing_parser() -> Any:
    table = listing_parser.compile_shape(SHAPE, storage.parse_timestamp)
    return listing_parser.ListingParser({"ListObjectsV2": ("ListBucketResult", table)})


def fast_parse(body: bytes) -> dict[str, Any] | None:
    return _listing_parser().parse(body)


# XML 1.0 text: no control characters but tab and newline, no surrogates.
xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
                   max_size=40)
timestamps = st.sampled_from(["2026-11-01T10:00:00.000Z", "2024-02-29T23:59:59Z", "2026-01-01T00:00:00.123456Z",
                              "2025-06-30T12:00:00+02:00"])


QUOTES = {'"': "&quot;"}  # S3 writes ETags as &quot;...&quot;


def element(name: str, text: str) -> str:
    return f"<{name}>{escape(text, QUOTES)}</{name}>" if text else f"<{name}/>"


@st.composite
def contents(draw: Any) -> str:
    parts = [element("Key", draw(xml_text)), element("LastModified", draw(timestamps)),
             element("ETag", '"' + draw(st.text(string.hexdigits, min_size=32, max_size=32)) + '"')]
    parts += [element("ChecksumAlgorithm", a) for a in draw(st.lists(st.sampled_from(["CRC32", "CRC64NVME"]),
                                                                      max_size=2))]
    if draw(st.booleans()):
        parts.append(element("ChecksumType", "FULL_OBJECT"))
    parts.append(element("Size", str(draw(st.integers(0, 5 * 2**40)))))
    if draw(st.booleans()):
        parts.append(element("StorageClass", draw(st.sampled_from(["STANDARD", "GLACIER", ""]))))
    if draw(st.booleans()):
        parts.append(f"<Owner>{element('ID', draw(xml_text))}{element('DisplayName', draw(xml_text))}</Owner>")
    if draw(st.booleans()):
        parts.append(f"<RestoreStatus>{element('IsRestoreInProgress', draw(st.sampled_from(['true', 'false'])))}"
                     f"{element('RestoreExpiryDate', draw(timestamps))}</RestoreStatus>")
    if draw(st.booleans()):
        parts.append(element("SomethingNew", draw(xml_text)))  # unknown to the model: ignored by both
    return "<Contents>" + "".join(draw(st.permutations(parts))) + "</Contents>"


@st.composite
def pages(draw: Any) -> bytes:
    top = [element("Name", draw(xml_text)), element("Prefix", draw(xml_text)),
           element("KeyCount", str(draw(st.integers(0, 1000)))), element("MaxKeys", "1000"),
           element("IsTruncated", draw(st.sampled_from(["true", "false"])))]
    for name in ("EncodingType", "ContinuationToken", "NextContinuationToken", "StartAfter", "Delimiter"):
        if draw(st.booleans()):
            top.append(element(name, draw(xml_text)))
    top += [draw(contents()) for _ in range(draw(st.integers(0, 4)))]
    top += [f"<CommonPrefixes>{element('Prefix', p)}</CommonPrefixes>" for p in draw(st.lists(xml_text, max_size=2))]
    glue = draw(st.sampled_from(["", "\n", "\n  "]))
    namespace = f' xmlns="{NS}"' if draw(st.booleans()) else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult{namespace}>{glue}'
            + glue.join(top) + f"{glue}</ListBucketResult>").encode()


@settings(max_examples=400, deadline=None)
@given(pages())
def test_fast_parser_gives_botocores_answer_for_any_page(body: bytes) -> None:
    assert fast_parse(body) == botocore_parse(body)


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0"?><Error><Code>InternalError</Code><Message>x</Message></Error>',  # error in a 200
    b'<ListBucketResult xmlns="' + NS.encode() + b'"><Name>b</Name><Contents><Key>a</Key>',  # cut short
    b"<ListBucketResult><Name>a</Name><Name>b</Name></ListBucketResult>",  # a scalar twice
    b"<ListBucketResult><Contents><Key>a</Key><Size>ten</Size></Contents></ListBucketResult>",  # not a number
    b"<ListBucketResult><MaxKeys/></ListBucketResult>",  # an empty number
])
def test_pages_the_fast_parser_is_unsure_of_are_left_to_botocore(body: bytes) -> None:
    handler = _listing_parser()
    response = {"status_code": 200, "headers": {}, "body": body}
    merged: dict[str, Any] = {}
    handler(operation_model=OPERATION, response_dict=response, customized_response_dict=merged)
    assert response["body"] == body and merged == {}


AWKWARD_KEYS = ["shows/a b", "shows/ü/ñ+%~//x", "shows/k&<>\"'", "shows/" + "z" * 1000, "shows/tab\there",
                "shows/new\nline", "shows/cr\rkey", "shows/emoji-\U0001f600", "other/x", "shows/%2F"]


def _plain_and_fast() -> tuple[Any, Any]:
    """A plain boto3 client, and one from ``make_client`` (the database is not used)."""
    return boto3.client("s3", region_name="us-east-1"), storage.make_client(make_settings("postgresql://unused").s3)


def _without_metadata(page: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in page.items() if k != "ResponseMetadata"}


def test_a_client_from_make_client_lists_exactly_what_botocore_lists(s3: Any) -> None:
    every = AWKWARD_KEYS + [f"shows/{i:04d}" for i in range(1005)]  # more than one 1,000-key page
    for key in every:
        s3.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"x")
    plain, fast = _plain_and_fast()
    for params in ({}, {"Prefix": "shows/", "StartAfter": "shows/0990", "MaxKeys": 7}, {"Delimiter": "/"},
                   {"FetchOwner": True}, {"StartAfter": "shows/0500"}):
        want = [_without_metadata(p) for p in plain.get_paginator("list_objects_v2").paginate(
            Bucket=TEST_BUCKET, **params)]
        got = [_without_metadata(p) for p in fast.get_paginator("list_objects_v2").paginate(
            Bucket=TEST_BUCKET, **params)]
        assert got == want, params
    assert [o.key for o in storage.list_objects(fast, TEST_BUCKET, prefix="shows/")] == sorted(
        k for k in every if k.startswith("shows/"))


def test_the_fast_parser_does_the_parsing_on_make_clients_clients(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The saving is real: botocore's parser sees an empty page, not the listing."""
    s3.put_object(Bucket=TEST_BUCKET, Key="shows/a", Body=b"x")
    _, fast = _plain_and_fast()
    seen: list[bytes] = []

    def spy(response_dict: dict[str, Any], **_: Any) -> None:
        seen.append(response_dict["body"])

    fast.meta.events.register("before-parse.s3.ListObjectsV2", spy)
    assert [o["Key"] for o in fast.list_objects_v2(Bucket=TEST_BUCKET)["Contents"]] == ["shows/a"]
    assert seen == [listing_parser.EMPTY_PAGES["ListObjectsV2"]]


@pytest.mark.parametrize("first_answer", [
    b'<?xml version="1.0"?><Error><Code>InternalError</Code><Message>hidden</Message></Error>',
    b'<?xml version="1.0"?><ListBucketResult xmlns="' + NS.encode() + b'"><Name>b</Name><Cont',
])
def test_a_200_answer_that_is_an_error_or_cut_short_is_still_retried(s3: Any, first_answer: bytes) -> None:
    """botocore's check for errors hidden in a 200 answer still runs, after the fast parser."""
    s3.put_object(Bucket=TEST_BUCKET, Key="shows/a", Body=b"x")
    _, fast = _plain_and_fast()
    answers: list[int] = []

    def first_try_broken(request: Any, **_: Any) -> AWSResponse | None:
        answers.append(len(answers))
        if len(answers) > 1:
            return None
        return AWSResponse(request.url, 200, {"Content-Type": "application/xml"}, RawBody(first_answer))

    fast.meta.events.register("before-send.s3.ListObjectsV2", first_try_broken)
    assert [o.key for o in storage.list_objects(fast, TEST_BUCKET)] == ["shows/a"]
    assert len(answers) == 2  # the broken answer was retried, not parsed as an empty page
