-- Named queries of reconcile (trr_assets/reconcile.py).

-- name: reconcile_run_start
insert into trr_assets.reconcile_runs (dry_run, buckets, prefix, run_by)
values (%(dry_run)s, %(buckets)s, %(prefix)s, %(run_by)s)
returning id

-- name: reconcile_run_finish
update trr_assets.reconcile_runs
set finished_at = now(),
    outcome = %(outcome)s,
    counts = %(counts)s,
    error = %(error)s
where id = %(id)s

-- name: reconcile_history
-- The last runs, newest first.
select id, started_at, finished_at, dry_run, buckets, prefix, outcome, counts, run_by, error
from trr_assets.reconcile_runs
order by started_at desc, id desc
limit %(limit)s

-- name: reconcile_count_failed_deletes
-- Deletions that gave up after deletes.max_attempts, under the prefix.
select count(*)
from trr_assets.delete_queue
where bucket = %(bucket)s
  and state = 'failed'
  and object_key >= %(start_at)s
  and (%(stop_before)s::text is null or object_key < %(stop_before)s)

-- name: reconcile_key_claimed
-- Whether a row or a queued deletion exists for the key now: an orphaned
-- object that gained either since the listing is no longer an orphan.
select exists (
         select 1 from core.show_assets where bucket = %(bucket)s and object_key = %(key)s
       )
    or exists (
         select 1 from trr_assets.delete_queue where bucket = %(bucket)s and object_key = %(key)s
       )

-- name: reconcile_lock_row
-- Re-read an orphaned row before deleting it; the lock keeps an upsert of
-- the same row from slipping in between the check and the delete.
select updated_at
from core.show_assets
where id = %(id)s
for update

-- name: reconcile_delete_row
-- The outbox trigger (sql/0005_delete_queue.sql) enqueues the S3 delete.
delete from core.show_assets
where id = %(id)s

-- name: reconcile_refresh_row
-- A mismatched row takes the object's current metadata.
update core.show_assets
set size_bytes = %(size)s,
    checksum = %(etag)s,
    content_type = coalesce(%(content_type)s, content_type)
where id = %(id)s
  and (size_bytes is distinct from %(size)s
       or checksum is distinct from %(etag)s
       or content_type is distinct from coalesce(%(content_type)s, content_type))
returning id

-- name: reconcile_inventory_create
-- One S3 Inventory report, loaded for this session only.
create temporary table if not exists reconcile_inventory (
  object_key text collate "C" not null,
  size_bytes bigint,
  etag text,
  last_modified timestamptz not null
) on commit preserve rows

-- name: reconcile_inventory_copy
copy pg_temp.reconcile_inventory (object_key, size_bytes, etag, last_modified) from stdin

-- name: reconcile_inventory_objects
-- The report is in no particular order (and may list a key twice): sort it
-- here, in S3's byte order, keeping the newest entry of each key.
select distinct on (object_key) object_key, size_bytes, etag, last_modified
from pg_temp.reconcile_inventory
where object_key >= %(start_at)s
  and (%(stop_before)s::text is null or object_key < %(stop_before)s)
order by object_key, last_modified desc
