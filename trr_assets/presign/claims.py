"""Who asks the presigner, and for which asset: JWT claims and ids, checked.

A request with claims runs as the database role the claims name
(PostgREST's rule: the ``role`` claim, or ``anon``), and only the API roles
may be named; the claims reach the database as JSON. Ids are UUIDs, given as
``uuid.UUID`` or as their text. Every check raises ``ValueError`` with a line
that never repeats a long or non-text value back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

CLAIM_ROLES = ("anon", "authenticated", "service_role")  # the roles claims may name


def claims_role(claims: Mapping[str, Any]) -> str:
    """The database role a request with these claims runs as (PostgREST's rule:
    the ``role`` claim, or ``anon`` when there is none). Only the API roles are
    accepted: a claim naming any other role (the table owner, say) is refused."""
    if not isinstance(claims, Mapping):
        raise ValueError("claims must be a mapping of JWT claims")
    role = claims.get("role", "anon")
    if role not in CLAIM_ROLES:
        shown = role if isinstance(role, str) and len(role) <= 64 else type(role).__name__
        raise ValueError(f"claims role {shown!r} is not one of {', '.join(CLAIM_ROLES)}")
    return str(role)


def claims_json(claims: Mapping[str, Any]) -> str:
    """The claims as ``request.jwt.claims`` holds them (compact JSON)."""
    try:
        return json.dumps(dict(claims), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"claims must be JSON-serializable ({exc})") from None


def parse_uuid(value: object, what: str) -> uuid.UUID:
    """``value`` (a UUID or its text) as a UUID; ``what`` names it in the error."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    shown = repr(value) if isinstance(value, str) and len(value) <= 64 else type(value).__name__
    raise ValueError(f"{what} {shown} is not a UUID")
