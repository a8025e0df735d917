-- Named queries of the benchmark suite (bench/), loaded with
-- trr_assets.db.parse_queries. The rows they build match bench/data.py.

-- name: insert_shows
insert into core.shows (id, title)
select id, 'bench show' from unnest(%(ids)s::uuid[]) as t(id)

-- name: insert_assets
-- per_show rows for each show, as sync would have written them for
-- bench/data.py's objects. With drift: no row for object numbers ending in
-- 01 (mod 100), a different size for those ending in 03 (and the listing
-- skips those ending in 02).
insert into core.show_assets (show_id, bucket, object_key, content_type, size_bytes, checksum)
select s.id,
       %(bucket)s,
       'shows/' || s.id::text || '/' || lpad(j::text, 7, '0') || '.jpg',
       %(content_type)s,
       1000 + j + case when %(drift)s and j %% 100 = 3 then 1 else 0 end,
       lpad(to_hex(j), 32, '0')
from unnest(%(ids)s::uuid[]) as s(id)
cross join generate_series(0, %(per_show)s - 1) as j
where not (%(drift)s and j %% 100 = 1)
order by 3

-- name: insert_assets_of_body
-- The same keys as insert_assets, for objects that all have the given body
-- (as bench.moto_server stores them): size and checksum (MD5, the ETag of a
-- single-part upload) match the objects, but for the drift.
insert into core.show_assets (show_id, bucket, object_key, content_type, size_bytes, checksum)
select s.id,
       %(bucket)s,
       'shows/' || s.id::text || '/' || lpad(j::text, 7, '0') || '.jpg',
       %(content_type)s,
       octet_length(%(body)s) + case when %(drift)s and j %% 100 = 3 then 1 else 0 end,
       md5(%(body)s)
from unnest(%(ids)s::uuid[]) as s(id)
cross join generate_series(0, %(per_show)s - 1) as j
where not (%(drift)s and j %% 100 = 1)
order by 3

-- name: delete_bucket_rows
-- Deleting the rows queues their objects for deletion (the outbox trigger).
delete from core.show_assets where bucket = %(bucket)s

-- name: queued_deletes
select count(*) from trr_assets.delete_queue where bucket = %(bucket)s and state = 'pending'

-- name: baseline_upsert
-- The baseline write path: one INSERT ... ON CONFLICT per object, sent by
-- executemany in pipeline mode; every conflicting row is rewritten.
insert into core.show_assets (show_id, bucket, object_key, content_type, size_bytes, checksum)
values (%s, %s, %s, %s, %s, %s)
on conflict (bucket, object_key) do update
  set content_type = excluded.content_type,
      size_bytes = excluded.size_bytes,
      checksum = excluded.checksum

-- name: wal_position
select pg_current_wal_lsn()

-- name: wal_bytes_since
select pg_wal_lsn_diff(pg_current_wal_lsn(), %(since)s::pg_lsn)::bigint

-- name: rows_written_since
-- Rows inserted or rewritten since a moment: the BEFORE UPDATE trigger sets
-- updated_at on every rewrite, so an untouched row keeps its old value.
select count(*) from core.show_assets where updated_at >= %(since)s

-- name: clock
select clock_timestamp()

-- name: add_org_member
-- One organization that owns every show, and one member of it.
with org as (
  insert into core.organizations (name) values ('bench org') returning id
), member as (
  insert into core.org_memberships (org_id, user_id, role)
  select id, %(user_id)s, 'member' from org
)
update core.shows set org_id = (select id from org)

-- name: asset_ids
select id from core.show_assets where bucket = %(bucket)s order by object_key
