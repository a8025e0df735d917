"""Listing pages (ListObjectsV2, ListObjectVersions), parsed fast (``storage.make_client`` installs this
on every client it makes).

botocore parses a 1,000-key ListObjectsV2 page twice: once whole, to see
whether a 200 answer is an error document in disguise, then by walking the
response shape node by node in Python (~25 ms of a page's ~35 ms of client
CPU, measured). Sync and reconcile list from many threads under one
interpreter lock, so that CPU is what bounds a sharded listing. The parser
below is compiled from the same output shape and gives the same dict
(the tests check it against botocore's own parser); it
runs on the ``before-parse`` event, puts its result where botocore merges
handler results, and hands botocore an empty page to parse. Anything it is
not sure of (an error document, a truncated body, a repeated scalar, a shape
it cannot compile) is left untouched for botocore, which then behaves
exactly as without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple
from xml.etree import ElementTree

import botocore.handlers

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_NAMESPACE = re.compile(r"\{.*\}")


class _Unsure(Exception):
    """The fast parser cannot vouch for botocore's answer: let botocore parse."""


def _scalar(type_name: str, timestamp: Callable[[str], Any]) -> Callable[[str | None], Any]:
    if type_name in ("string", "character"):
        return lambda text: text if text is not None else ""
    if type_name in ("integer", "long"):
        return lambda text: int(text if text is not None else "")
    if type_name == "boolean":
        return lambda text: text == "true"
    if type_name == "timestamp":
        return lambda text: timestamp(text if text is not None else "")
    raise _Unsure(type_name)


class _Member(NamedTuple):
    name: str
    convert: Callable[[str | None], Any] | None  # a scalar's converter; None for a structure
    fields: dict[str, _Member] | None  # a structure's members, by XML name
    repeated: bool  # a flattened list: one element per item


def compile_shape(shape: Any, timestamp: Callable[[str], Any]) -> dict[str, _Member]:
    """A structure's body members by XML element name (botocore's rules)."""
    table: dict[str, _Member] = {}
    for name, member in shape.members.items():
        where = member.serialization
        if where.get("location") or where.get("eventheader"):
            continue  # from the headers: botocore still parses those
        if where.get("xmlAttribute") or where.get("xmlNamespace"):
            raise _Unsure(name)
        repeated = member.type_name == "list"
        if repeated and not where.get("flattened"):
            raise _Unsure(name)
        item = member.member if repeated else member
        xml_name = (item.serialization.get("name") if repeated else None) or where.get("name") or name
        if item.type_name == "structure":
            table[xml_name] = _Member(name, None, compile_shape(item, timestamp), repeated)
        else:
            table[xml_name] = _Member(name, _scalar(item.type_name, timestamp), None, repeated)
    return table


_UNKNOWN = _Member("", None, None, False)  # an element the model does not know


def _member(table: dict[str, _Member], tag: str) -> _Member:
    """The member for an element's tag. The tag, namespace and all, is added
    to the table on first sight, so the namespace is stripped once, not per
    element."""
    member = table.get(tag)
    if member is None:
        member = table[tag] = table.get(_NAMESPACE.sub("", tag), _UNKNOWN)
    return member


def _parse_structure(node: ElementTree.Element, table: dict[str, _Member]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for child in node:
        member = table.get(child.tag) or _member(table, child.tag)
        if member is _UNKNOWN:
            continue  # botocore ignores such elements too
        if member.fields is None:
            value = member.convert(child.text)  # type: ignore[misc]
        else:
            value = _parse_structure(child, member.fields)
        if member.repeated:
            parsed.setdefault(member.name, []).append(value)
        elif member.name in parsed:
            raise _Unsure(member.name)  # botocore would turn a repeated scalar into a list
        else:
            parsed[member.name] = value
    return parsed


class ListingParser:
    """One client's ``before-parse`` handler for listing answers
    (ListObjectsV2, ListObjectVersions).

    Registered for every S3 operation (``before-parse.s3.*``), because only a
    handler there can run before botocore's own; it lets the others pass.
    """

    def __init__(self, tables: dict[str, tuple[str, dict[str, _Member]]]) -> None:
        self._tables = tables  # operation name -> (root element, its table)

    def parse(self, body: bytes, operation: str = "ListObjectsV2") -> dict[str, Any] | None:
        """The page as botocore would parse it, or None when unsure."""
        root_name, table = self._tables[operation]
        try:
            root = ElementTree.fromstring(body)
            if _NAMESPACE.sub("", root.tag) != root_name:
                return None  # an error document, answered with 200
            return _parse_structure(root, table)
        except (_Unsure, ElementTree.ParseError, ValueError, TypeError):
            return None

    def __call__(self, operation_model: Any, response_dict: dict[str, Any],
                 customized_response_dict: dict[str, Any], **_: Any) -> None:
        body = response_dict.get("body")
        if operation_model.name not in self._tables or response_dict.get("status_code") != 200:
            return
        if not isinstance(body, bytes) or not body:
            return
        parsed = self.parse(body, operation_model.name)
        if parsed is not None:
            customized_response_dict.update(parsed)
            response_dict["body"] = EMPTY_PAGES[operation_model.name]


# The listings parsed fast: operation name -> the root element of its answer.
FAST_LISTINGS = {"ListObjectsV2": "ListBucketResult", "ListObjectVersions": "ListVersionsResult"}
EMPTY_PAGES = {
    name: f'<{root} xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></{root}>'.encode()
    for name, root in FAST_LISTINGS.items()
}


def install(client: S3Client, timestamp: Callable[[str], Any]) -> None:
    """Parse ``client``'s listing pages with ``ListingParser`` (see above),
    timestamps with ``timestamp``.

    It must run before botocore's check for errors hidden in a 200 answer,
    which parses the whole page again: that check is moved behind it, on this
    client only. Should botocore rename it, the check stays where it is and
    only the saving is lost.
    """
    tables = {}
    for name, root in FAST_LISTINGS.items():
        shape = client.meta.service_model.operation_model(name).output_shape
        try:
            tables[name] = (root, compile_shape(shape, timestamp))
        except _Unsure:
            continue
    if not tables:
        return
    events = client.meta.events
    check = getattr(botocore.handlers, "_handle_200_error", None)
    if check is not None:
        events.unregister("before-parse.s3.*", check)
    events.register_first("before-parse.s3.*", ListingParser(tables), unique_id="trr-assets-listing-parser")
    if check is not None:
        events.register_first("before-parse.s3.*", check)
