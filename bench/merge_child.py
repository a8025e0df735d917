"""One reconcile merge, or its naive baseline, in a fresh interpreter.

``python -m bench.merge_child --db URL --bucket B --show-pool P --shows S
--per-show M --mode merge|naive`` prints one JSON object: the keys handled,
the seconds the comparison took (imports and connecting excluded), what it
found, and the process's peak resident set size before and after. A process
per measurement, so one size's memory never inflates another's figure (see
``peak_rss_mb`` for why the peak is read from ``/proc/self/status``).

- ``merge``: ``diff.merge`` of the listing (generated lazily, in S3's order)
  with ``db.stream_rows`` (a streamed query), as reconcile consumes it:
  keys in sync counted, a ``Diff`` for every other key.
- ``naive``: the same query fetched whole into a dict, the listing into
  another, then set differences and a comparison of the common keys.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections import Counter
from operator import attrgetter
from typing import Any

import psycopg

from bench import data
from trr_assets import db, diff, keys
from trr_assets.runtime import tune_collector


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MB (2**20 bytes).

    Linux's ``VmHWM``: the high-water mark of this program's own memory.
    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used where ``VmHWM`` exists:
    Linux carries it over through ``execve``, so a child reports at least
    the RSS its parent had when it was started.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux, a fallback


def merge(conn: psycopg.Connection[Any], bucket: str, listing: Any) -> Counter[str]:
    with conn.transaction():  # the rows' stream runs in it
        rows = db.stream_rows(conn, bucket, keys.prefix_range(data.PREFIX))
        same = 0
        kinds: Counter[diff.Kind] = Counter()
        # As reconcile consumes it: equal keys counted, every other key one Diff.
        for batch in diff.merge(listing, rows):
            same += batch.same
            kinds.update(map(attrgetter("kind"), batch.diffs))
    return Counter({"same": same, **{kind.value: count for kind, count in kinds.items()}})


def naive(conn: psycopg.Connection[Any], bucket: str, listing: Any) -> Counter[str]:
    key_range = keys.prefix_range(data.PREFIX)
    params = {"bucket": bucket, "start_at": key_range.start_at, "stop_before": key_range.stop_before}
    with conn.cursor(binary=True) as cursor:  # binary, as stream_rows reads it
        fetched = cursor.execute(db.query("stream_rows_in_range"), params).fetchall()
    rows = {r[0]: r for r in fetched if r[1] is not None}  # r[1] is None: a queue entry
    objects = {o.key: o for o in listing}
    counts: Counter[str] = Counter()
    counts["only_in_s3"] = len(objects.keys() - rows.keys())
    counts["only_in_db"] = len(rows.keys() - objects.keys())
    for key in objects.keys() & rows.keys():
        obj, row = objects[key], rows[key]
        counts["same" if (row[2], row[3]) == (obj.size, obj.etag) else "changed"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.merge_child")
    parser.add_argument("--db", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--show-pool", type=int, required=True, help="show ids generated (the first --shows are used)")
    parser.add_argument("--shows", type=int, required=True)
    parser.add_argument("--per-show", type=int, required=True)
    parser.add_argument("--mode", choices=("merge", "naive"), required=True)
    args = parser.parse_args()
    tune_collector()  # as the trr-assets command runs reconcile (either mode)
    shows = data.show_ids(args.show_pool)[: args.shows]
    listing = data.objects(shows, args.per_show, drift=True)
    with psycopg.connect(args.db, autocommit=True) as conn:
        before = peak_rss_mb()
        started = time.perf_counter()
        counts = (merge if args.mode == "merge" else naive)(conn, args.bucket, listing)
        seconds = time.perf_counter() - started
    print(json.dumps({
        "mode": args.mode,
        "keys": args.shows * args.per_show,
        "seconds": seconds,
        "counts": dict(counts),
        "rss_before_mb": before,
        "rss_mb": peak_rss_mb(),
    }))


if __name__ == "__main__":
    main()
