"""An S3 client that answers from a listing and HEAD results held in memory.

For the import and re-sync benchmarks, which measure the database side of
sync: the listing and each object's HEAD answer are fetched beforehand (here:
built from ``bench.data``) and served from memory, so the figure is what sync
does with them (merge against the rows, batch, COPY, upsert) and not S3's
latency. Only the calls sync makes are answered; anything else fails loudly.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from trr_assets.keys import prefix_end
from trr_assets.storage import ObjectInfo


class PrefetchedS3:
    def __init__(self, bucket: str, objects: Sequence[ObjectInfo], *, content_type: str) -> None:
        self.bucket = bucket
        self._keys = [o.key for o in objects]
        if any(a >= b for a, b in pairwise(self._keys)):
            raise ValueError("the listing must be sorted and without duplicates")
        # What botocore would return for each object, built once.
        self._items = [
            {"Key": o.key, "Size": o.size, "ETag": f'"{o.etag}"', "LastModified": o.last_modified,
             "StorageClass": "STANDARD"}
            for o in objects
        ]
        self._heads = {
            o.key: {"ContentLength": o.size, "ETag": f'"{o.etag}"', "ContentType": content_type,
                    "LastModified": o.last_modified, "Metadata": {}}
            for o in objects
        }
        self.list_calls = 0
        self.head_calls = 0

    def _check(self, bucket: str) -> None:
        if bucket != self.bucket:
            raise ValueError(f"this prefetched listing is of bucket {self.bucket}, not {bucket}")

    def list_objects_v2(
        self,
        *,
        Bucket: str,
        Prefix: str = "",
        MaxKeys: int = 1000,
        StartAfter: str | None = None,
        ContinuationToken: str | None = None,
        **unexpected: Any,
    ) -> dict[str, Any]:
        if unexpected:
            raise TypeError(f"list_objects_v2: unexpected parameters {sorted(unexpected)}")
        self._check(Bucket)
        self.list_calls += 1
        after = ContinuationToken or StartAfter
        start = bisect.bisect_left(self._keys, Prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(self._keys, after))
        # The keys under Prefix are one sorted run: found by bisection, not
        # a Python step per key, so serving a page costs next to nothing.
        stop = prefix_end(Prefix)
        end = len(self._keys) if stop is None else bisect.bisect_left(self._keys, stop)
        page = self._items[start : min(end, start + MaxKeys)]
        more = start + len(page) < end
        answer: dict[str, Any] = {"Contents": page, "IsTruncated": more, "KeyCount": len(page)}
        if more:
            answer["NextContinuationToken"] = page[-1]["Key"]
        return answer

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._check(Bucket)
        self.head_calls += 1
        return self._heads[Key]

    def head_bucket(self, *, Bucket: str) -> dict[str, Any]:
        self._check(Bucket)
        return {}
