"""The safety limits on a repair: a bucket is judged whole, from the
counting pass, before anything in it is deleted."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from trr_assets.config import ReconcileSettings

OBJECT_POLICIES_THAT_DELETE = ("delete", "quarantine")


@dataclass(frozen=True)
class Judgement:
    """What the repair pass may do in one bucket: nothing (``refusal``), or at
    most as many deletions as the counting pass found."""

    refusal: str | None
    object_budget: int
    row_budget: int


def judge(bucket: str, plan: Counter[str], error: str | None, rc: ReconcileSettings, *, force: bool) -> Judgement:
    """A bucket whose counting pass failed part way is refused whole; so is
    one whose planned deletions break a limit, unless ``force``."""
    if error is not None:
        return Judgement(
            f"bucket {bucket}: repair refused, its listing or a query failed part way ({error}); nothing was changed",
            0, 0,
        )
    object_budget = plan["orphaned_objects"] if rc.orphaned_objects in OBJECT_POLICIES_THAT_DELETE else 0
    row_budget = plan["orphaned_rows"] if rc.orphaned_rows == "delete" else 0
    problems = limit_problems(
        object_budget, row_budget, plan["objects_scanned"], plan["rows_scanned"],
        max_deletes=rc.max_deletes, max_fraction=rc.max_delete_fraction,
    )
    refusal = None
    if problems and not force:
        refusal = f"bucket {bucket}: repair refused, " + "; ".join(problems) + " (--force overrides)"
    return Judgement(refusal, object_budget, row_budget)


def limit_problems(
    object_deletes: int, row_deletes: int, objects: int, rows: int, *, max_deletes: int, max_fraction: float
) -> list[str]:
    """Which safety limit the planned deletions of one bucket break, and by how much."""
    problems = []
    total = object_deletes + row_deletes
    if total > max_deletes:
        problems.append(
            f"{_count(total, 'deletion')} {'exceeds' if total == 1 else 'exceed'} "
            f"reconcile.max_deletes {max_deletes} by {total - max_deletes}"
        )
    for what, wanted, of in (("object", object_deletes, objects), ("row", row_deletes, rows)):
        limit = math.floor(max_fraction * of)
        if wanted > max_fraction * of:
            problems.append(
                f"{_count(wanted, what + ' deletion')} would be {wanted / max(of, 1):.1%} of its "
                f"{_count(of, what)}, above reconcile.max_delete_fraction {max_fraction:g} "
                f"(limit {limit}, over by {wanted - limit})"
            )
    return problems


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
