-- Named queries of the diff engine (trr_assets/diff.py).

-- name: stream_rows_in_range
-- Rows and queued deletions of one bucket in [start_at, stop_before), in
-- byte order, shaped as diff.RowInfo (key, asset_id, size, etag, updated_at,
-- queued, queue_state). Both sides are collated "C"; a queue entry sorts
-- right after its key's row, if any. id is sent as text: building a Python
-- UUID per row costs more than the rest of the row.
select object_key, id::text, size_bytes, checksum, updated_at, false, null::text
from core.show_assets
where bucket = %(bucket)s
  and object_key >= %(start_at)s
  and (%(stop_before)s::text is null or object_key < %(stop_before)s)
union all
select object_key, null::text, null::bigint, null::text, updated_at, true, state
from trr_assets.delete_queue
where bucket = %(bucket)s
  and object_key >= %(start_at)s
  and (%(stop_before)s::text is null or object_key < %(stop_before)s)
order by 1

-- name: stream_row_keys_in_range
-- The same stream with only what sync compares (key, size, ETag): asset_id
-- and updated_at come back null, which saves converting them per row.
select object_key, null::text, size_bytes, checksum, null::timestamptz, false, null::text
from core.show_assets
where bucket = %(bucket)s
  and object_key >= %(start_at)s
  and (%(stop_before)s::text is null or object_key < %(stop_before)s)
union all
select object_key, null::text, null::bigint, null::text, null::timestamptz, true, state
from trr_assets.delete_queue
where bucket = %(bucket)s
  and object_key >= %(start_at)s
  and (%(stop_before)s::text is null or object_key < %(stop_before)s)
order by 1
