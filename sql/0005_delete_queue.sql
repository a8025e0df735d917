-- The transactional outbox of S3 deletions.
--
-- A trigger on core.show_assets writes each deleted row's object into
-- trr_assets.delete_queue in the same transaction as the row delete, so every
-- path (the app, an operator's SQL, ON DELETE CASCADE from core.shows) ends
-- in an S3 delete, and a rolled-back delete enqueues nothing.
--
-- One entry per (bucket, object_key). An entry leaves the table when S3 has
-- confirmed the delete, or when a new row for the same key cancels it (a
-- re-upload). state 'failed' entries gave up after deletes.max_attempts and
-- stay until an operator requeues them (see README).
create table trr_assets.delete_queue (
  id bigint generated always as identity primary key,
  bucket text not null,
  object_key text collate "C" not null,
  asset_id uuid,
  state text not null default 'pending' check (state in ('pending', 'failed')),
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  last_error text,
  enqueued_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create unique index delete_queue_key on trr_assets.delete_queue (bucket, object_key);
create index delete_queue_due on trr_assets.delete_queue (next_attempt_at) where state = 'pending';

revoke all on trr_assets.delete_queue from public;

-- Statement-level with a transition table: one INSERT per DELETE statement,
-- however many rows it removed. SECURITY DEFINER because the deleting role
-- (service_role, say) has no rights on trr_assets.
create function trr_assets.enqueue_asset_deletes() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  insert into trr_assets.delete_queue as q (bucket, object_key, asset_id)
  select d.bucket, d.object_key, d.id from deleted_assets d
  on conflict (bucket, object_key) do update
    set asset_id = excluded.asset_id,
        state = 'pending',
        attempts = 0,
        next_attempt_at = now(),
        last_error = null,
        enqueued_at = now(),
        updated_at = now();
  return null;
end
$$;

create trigger show_assets_enqueue_delete
  after delete on core.show_assets
  referencing old table as deleted_assets
  for each statement execute function trr_assets.enqueue_asset_deletes();

-- A new row for a key whose deletion is queued (a re-upload) cancels that
-- deletion, so the new object survives. A drain that holds the entry's row
-- lock (FOR UPDATE) while it calls S3 makes this DELETE wait for it: the new
-- row commits only after the old object is gone, never before.
create function trr_assets.cancel_asset_deletes() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from trr_assets.delete_queue q
  using inserted_assets i
  where q.bucket = i.bucket and q.object_key = i.object_key;
  return null;
end
$$;

create trigger show_assets_cancel_delete
  after insert on core.show_assets
  referencing new table as inserted_assets
  for each statement execute function trr_assets.cancel_asset_deletes();

-- The same for an UPDATE that moves a row onto a key whose deletion is
-- queued (an operator re-pointing a row, an upsert's update arm): the row
-- names that object again, so its deletion is cancelled. (Transition tables
-- rule out "after update of bucket, object_key"; the join is on the unique
-- index and the queue is small, so firing on every UPDATE costs little.)
create trigger show_assets_cancel_delete_on_update
  after update on core.show_assets
  referencing new table as inserted_assets
  for each statement execute function trr_assets.cancel_asset_deletes();

-- TRUNCATE fires no DELETE trigger, yet it deletes rows (also through
-- "truncate core.shows cascade"). Before the table is emptied, enqueue
-- every row it holds, in the same transaction.
create function trr_assets.enqueue_truncated_assets() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  insert into trr_assets.delete_queue as q (bucket, object_key, asset_id)
  select a.bucket, a.object_key, a.id from core.show_assets a
  on conflict (bucket, object_key) do update
    set asset_id = excluded.asset_id,
        state = 'pending',
        attempts = 0,
        next_attempt_at = now(),
        last_error = null,
        enqueued_at = now(),
        updated_at = now();
  return null;
end
$$;

create trigger show_assets_enqueue_truncate
  before truncate on core.show_assets
  for each statement execute function trr_assets.enqueue_truncated_assets();

revoke all on function trr_assets.enqueue_asset_deletes() from public;
revoke all on function trr_assets.cancel_asset_deletes() from public;
revoke all on function trr_assets.enqueue_truncated_assets() from public;
