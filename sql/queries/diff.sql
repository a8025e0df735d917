-- Named queries of the diff engine (trr_assets/diff.py).

-- name: stream_rows_in_range
-- Rows and queued deletions of one bucket in [start_at, stop_before), in
-- byte order, shaped as diff.RowInfo (key, asset_id, size, etag, updated_at,
-- queued, queue_state). Both sides are collated "C"; a queue entry and its
-- key's row come out next to each other. id is sent as text: building a
-- Python UUID per row costs more than the rest of the row.
--
-- Each branch is ordered on its own, so the planner merges them (Merge
-- Append) over an index scan of show_assets_unique, and the first row comes
-- at once. With the ORDER BY only outside, PostgreSQL 16 appends the
-- branches and sorts the whole range before the first row: about 1.4 s for
-- 1M rows, during which the merge waits.
select * from (
  (select object_key, id::text, size_bytes, checksum, updated_at, false, null::text
   from core.show_assets
   where bucket = %(bucket)s
     and object_key >= %(start_at)s
     and (%(stop_before)s::text is null or object_key < %(stop_before)s)
   order by object_key)
  union all
  (select object_key, null::text, null::bigint, null::text, updated_at, true, state
   from trr_assets.delete_queue
   where bucket = %(bucket)s
     and object_key >= %(start_at)s
     and (%(stop_before)s::text is null or object_key < %(stop_before)s)
   order by object_key)
) as rows_and_queue
order by 1

-- name: stream_row_keys_in_range
-- The same stream with only what sync compares (key, size, ETag): asset_id
-- and updated_at come back null, which saves converting them per row.
select * from (
  (select object_key, null::text, size_bytes, checksum, null::timestamptz, false, null::text
   from core.show_assets
   where bucket = %(bucket)s
     and object_key >= %(start_at)s
     and (%(stop_before)s::text is null or object_key < %(stop_before)s)
   order by object_key)
  union all
  (select object_key, null::text, null::bigint, null::text, null::timestamptz, true, state
   from trr_assets.delete_queue
   where bucket = %(bucket)s
     and object_key >= %(start_at)s
     and (%(stop_before)s::text is null or object_key < %(stop_before)s)
   order by object_key)
) as rows_and_queue
order by 1

-- name: stream_rows_in_utc
-- For the rest of the row stream's transaction: timestamps arrive in UTC,
-- which psycopg converts about three times faster than a named zone such
-- as 'Etc/UTC' (the instants are the same; only the tzinfo differs).
set local time zone 'UTC'
