-- Named queries of the diff engine (trr_assets/diff.py).

-- name: stream_rows_in_range
-- Rows and queued deletions of one bucket in [start_at, stop_before), in
-- byte order. Both sides are collated "C" and indexed on (bucket, object_key),
-- so PostgreSQL merges two index scans; nothing is sorted in memory.
select object_key, id, size_bytes, checksum, updated_at, null::text as queue_state
from core.show_assets
where bucket = %(bucket)s
  and object_key >= %(start_at)s
  and (%(stop_before)s::text is null or object_key < %(stop_before)s)
union all
select object_key, null::uuid, null::bigint, null::text, updated_at, state
from trr_assets.delete_queue
where bucket = %(bucket)s
  and object_key >= %(start_at)s
  and (%(stop_before)s::text is null or object_key < %(stop_before)s)
order by 1
