-- Named queries of the event listener (trr_assets/listen.py).

-- name: events_claim
-- Claim a batch's keys, one event per (bucket, key) (the newest of the
-- batch): a key's sequencer is recorded when it is greater than the one on
-- record (trr_assets.sequencer_newer), and the keys returned are the ones to
-- apply; the others are stale. Every conflicting entry is locked until the
-- transaction ends, whether it is updated or not, so two listeners holding
-- events of the same key apply them one after the other, and the second
-- sees the first's sequencer. Keys go in (bucket, key) order: concurrent
-- batches lock in the same order.
insert into trr_assets.event_sequencers as s (bucket, object_key, sequencer, event_name, event_time)
select e.bucket, e.object_key, e.sequencer, e.event_name, e.event_time
from unnest(%(buckets)s::text[], %(keys)s::text[], %(sequencers)s::text[],
            %(names)s::text[], %(times)s::timestamptz[])
       as e(bucket, object_key, sequencer, event_name, event_time)
order by e.bucket collate "C", e.object_key collate "C"
on conflict (bucket, object_key) do update
  set sequencer = excluded.sequencer,
      event_name = excluded.event_name,
      event_time = excluded.event_time,
      applied_at = now()
  where trr_assets.sequencer_newer(excluded.sequencer, s.sequencer)
returning s.bucket, s.object_key

-- name: events_current_rows
-- The rows of some keys of a bucket, as a creation event is compared with
-- them: an object whose size and ETag the row already holds needs no HEAD
-- and no write (sync's SAME).
select object_key, size_bytes, checksum
from core.show_assets
where bucket = %(bucket)s and object_key = any(%(keys)s::text[])

-- name: events_lock_rows
-- The rows of removed keys, locked (in key order) for the live check and
-- the delete: no upsert of these rows slips in between.
select id, object_key
from core.show_assets
where bucket = %(bucket)s and object_key = any(%(keys)s::text[])
order by object_key
for update

-- name: events_delete_rows
-- Delete rows whose objects S3 confirmed gone. The outbox trigger of
-- sql/0005_delete_queue.sql queues an S3 delete for each; events_unqueue
-- takes those entries out again in the same transaction (so no drain ever
-- sees them): the object is already gone, and a queued delete would remove
-- an object re-uploaded under the same key since the check.
delete from core.show_assets
where id = any(%(ids)s::uuid[])

-- name: events_unqueue
-- The entries the trigger queued for the rows just deleted (matched on the
-- rows' ids, so an entry queued by anything else stays).
delete from trr_assets.delete_queue
where bucket = %(bucket)s and asset_id = any(%(ids)s::uuid[])

-- name: events_prune_sequencers
-- Up to %(limit)s entries applied more than %(days)s days ago. An entry a
-- listener holds (claiming a newer event of its key) is skipped: it is being
-- renewed.
delete from trr_assets.event_sequencers
where (bucket, object_key) in (
  select bucket, object_key
  from trr_assets.event_sequencers
  where applied_at < now() - make_interval(days => %(days)s)
  limit %(limit)s
  for update skip locked
)
