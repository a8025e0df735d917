-- Named queries of sync (trr_assets/sync.py).

-- name: sync_existing_shows
-- Which of these show ids name a core.shows row (before any HEAD request, so
-- keys of unknown shows cost nothing). Reads core.shows as the connecting
-- role: sync must run as a role that RLS does not filter (the owner, or
-- Supabase's service_role / postgres).
select id::text from core.shows where id = any(%(ids)s::uuid[])

-- name: sync_prepare_batch
-- One round trip before a batch's COPY: arm the guard trigger of 0007 for
-- this transaction only, create the per-connection staging table on first
-- use, and empty it (on commit it empties itself; inside a caller's
-- transaction the previous batch's rows would still be there).
select set_config('trr_assets.refuse_queued_keys', 'on', true);
create temp table if not exists trr_sync_batch (
  id uuid not null,
  object_key text collate "C" not null,
  show_id uuid not null,
  size_bytes bigint not null,
  checksum text not null,
  content_type text,
  owner_id uuid
) on commit delete rows;
truncate pg_temp.trr_sync_batch

-- name: sync_copy_batch
copy pg_temp.trr_sync_batch (id, object_key, show_id, size_bytes, checksum, content_type, owner_id) from stdin

-- name: sync_begin_new_batch
-- The first statement of a batch of new keys' transaction, in one round
-- trip: arms the guard trigger of 0007 for this transaction only, and
-- returns which of the batch's show ids name a core.shows row (as
-- sync_existing_shows).
select set_config('trr_assets.refuse_queued_keys', 'on', true),
       array(select id::text from core.shows where id = any(%(ids)s::uuid[]))

-- name: sync_copy_new_rows
-- A batch of keys that had no row when the merge read them, copied straight
-- into the table: no staging table, no conflict check, and COPY's batched
-- heap inserts. The unique index, the foreign key to core.shows and the
-- guard of 0007 refuse the whole batch if a row, a show deletion or a queued
-- deletion got there first; sync then writes the batch with
-- sync_upsert_batch instead (sync._write_new). COPY is refused outright to
-- a role that RLS applies to, with the same fallback.
copy core.show_assets (id, object_key, show_id, size_bytes, checksum, content_type, owner_id, bucket) from stdin

-- name: sync_refuse_queued_keys_off
-- Disarms the guard again when the batch ran inside a caller's transaction
-- (a top-level transaction drops the setting at its commit).
select set_config('trr_assets.refuse_queued_keys', 'off', true)

-- name: sync_upsert_batch
-- One statement per batch. Inserts only keys whose show exists and whose
-- deletion is not queued (checked in this statement's snapshot; the guard
-- trigger of 0007 repeats the queue check after any lock wait, see there).
-- An existing row is rewritten only when something differs, so an unchanged
-- object writes nothing and updated_at (set by a BEFORE UPDATE trigger)
-- stays. owner_id is kept when the object carries no owner-id metadata.
-- Rows go in key order, so concurrent writers lock in the same order. A new
-- row takes the id sync gave it in the staging table, time-ordered (see
-- sync._time_ordered_ids); an existing row keeps its id.
-- Returns the counts of what happened to the batch.
with batch as materialized (
  select b.*,
         exists (select 1 from core.shows s where s.id = b.show_id) as show_exists,
         exists (select 1 from trr_assets.delete_queue q
                 where q.bucket = %(bucket)s and q.object_key = b.object_key) as queued
  from pg_temp.trr_sync_batch b
),
written as (
  insert into core.show_assets as a
    (id, show_id, bucket, object_key, content_type, size_bytes, checksum, owner_id)
  select id, show_id, %(bucket)s, object_key, content_type, size_bytes, checksum, owner_id
  from batch
  where show_exists and not queued
  order by object_key
  on conflict (bucket, object_key) do update
    set content_type = excluded.content_type,
        size_bytes = excluded.size_bytes,
        checksum = excluded.checksum,
        owner_id = coalesce(excluded.owner_id, a.owner_id)
    where (a.content_type, a.size_bytes, a.checksum, a.owner_id)
          is distinct from
          (excluded.content_type, excluded.size_bytes, excluded.checksum,
           coalesce(excluded.owner_id, a.owner_id))
  returning a.xmax = 0 as inserted
)
select
  (select count(*) from written where inserted) as inserted,
  (select count(*) from written where not inserted) as updated,
  (select count(*) from batch where not show_exists) as unknown_show,
  (select count(*) from batch where show_exists and queued) as queued

-- name: sync_mark_heads_pending
-- The keys of a batch written from the listing alone (sync.metadata =
-- "listing"), put on trr_assets.heads_pending for a later pass with HEADs,
-- in the transaction that wrote them. Keys that got no row (skipped, their
-- deletion queued) cost that pass one anti-join, not a HEAD.
insert into trr_assets.heads_pending (bucket, object_key)
select %(bucket)s, k from unnest(%(keys)s::text[]) as k
on conflict do nothing

-- name: sync_heads_pending
-- The next rows written from the listing alone, in key order, after the
-- given key and under the pass's prefix (from start, the prefix, to stop, the
-- end of that prefix or null).
select a.object_key, a.size_bytes, a.checksum
from trr_assets.heads_pending p
join core.show_assets a on a.bucket = p.bucket and a.object_key = p.object_key
where p.bucket = %(bucket)s and p.object_key > %(after)s and p.object_key >= %(start)s
  and (%(stop)s::text is null or p.object_key < %(stop)s::text)
order by p.object_key
limit %(limit)s

-- name: sync_heads_done
-- Keys HEADed by a pass with sync.metadata = "head": their rows are complete.
delete from trr_assets.heads_pending
where bucket = %(bucket)s and object_key = any(%(keys)s::text[])

-- name: sync_heads_pending_orphans
-- Entries of rows deleted since they were listed (any deletion path): dropped
-- at the start of a bucket's "head" pass over the list.
delete from trr_assets.heads_pending p
where p.bucket = %(bucket)s
  and not exists (select 1 from core.show_assets a where a.bucket = p.bucket and a.object_key = p.object_key)
