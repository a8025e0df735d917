-- Sync (and reconcile's `import` repair) must never re-create a row whose
-- deletion is queued: the cancel trigger of 0005 would then drop the queued
-- S3 delete and the asset a user deleted would come back.
--
-- The upsert already skips keys that have a queue entry in its statement's
-- snapshot. That is not enough on its own: when another transaction is
-- deleting the same row while the upsert runs, the INSERT waits on the row,
-- and once the delete commits, inserts a fresh row, although the delete's
-- queue entry (committed with it) was invisible to the statement's
-- snapshot. The check must be made after that wait, so it is made here, in
-- an AFTER INSERT statement trigger: it runs once the INSERT has finished
-- every lock wait, and (a volatile function in READ COMMITTED) with a fresh
-- snapshot, which sees the committed queue entry. It raises
-- serialization_failure; sync retries the batch, whose snapshot then sees
-- the entry and skips the key.
--
-- It runs only when the inserting transaction has set
-- trr_assets.refuse_queued_keys = 'on' (sync does, per batch): for the app, a
-- new row for a queued key is a re-upload, and cancelling the delete is the
-- point. Triggers on the same event fire in name order, so this one
-- (show_assets_block_...) runs before show_assets_cancel_delete, while the
-- queue entry is still there to be seen.
create function trr_assets.refuse_queued_inserts() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  queued_key text;
begin
  select i.object_key into queued_key
  from inserted_assets i
  join trr_assets.delete_queue q on q.bucket = i.bucket and q.object_key = i.object_key
  limit 1;
  if found then
    raise exception 'trr-assets: refusing to insert a key whose deletion is queued'
      using errcode = 'serialization_failure',
            hint = 'retry: the next attempt sees the queued deletion and skips the key';
  end if;
  return null;
end
$$;

revoke all on function trr_assets.refuse_queued_inserts() from public;

create trigger show_assets_block_queued_reinsert
  after insert on core.show_assets
  referencing new table as inserted_assets
  for each statement
  when (current_setting('trr_assets.refuse_queued_keys', true) = 'on')
  execute function trr_assets.refuse_queued_inserts();
