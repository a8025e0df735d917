-- Named queries of the delete outbox (trr_assets/deletes.py).

-- name: take_due_deletes
-- Lock the next due entries. SKIP LOCKED: concurrent drains take disjoint
-- sets, and an entry held by one is never deleted twice. The locks are held
-- until the drain commits, across the S3 call: that is what makes a
-- re-upload's cancel trigger (sql/0005_delete_queue.sql) wait for the drain.
-- Entries S3 refused earlier in this drain (%(seen)s) wait for the next run.
select id, bucket, object_key, attempts
from trr_assets.delete_queue
where state = 'pending'
  and next_attempt_at <= now()
  and id <> all(%(seen)s::bigint[])
order by next_attempt_at, id
limit %(limit)s
for update skip locked

-- name: take_key_deletes
-- Lock the pending entries of the given keys, due or not (an explicit
-- request, as after `trr-assets delete`).
select q.id, q.bucket, q.object_key, q.attempts
from trr_assets.delete_queue q
join unnest(%(buckets)s::text[], %(keys)s::text[]) as k(bucket, object_key)
  on q.bucket = k.bucket and q.object_key = k.object_key
where q.state = 'pending'
  and q.id <> all(%(seen)s::bigint[])
order by q.id
limit %(limit)s
for update of q skip locked

-- name: live_rows_of_entries
-- Queue entries whose key has a row again. The cancel triggers remove such
-- entries, so this finds nothing unless something bypassed them; the drain
-- then completes the entry without deleting the object (defence in depth).
-- A plain read: no lock is taken on core.show_assets rows.
select q.id
from trr_assets.delete_queue q
where q.id = any(%(ids)s::bigint[])
  and exists (
    select 1 from core.show_assets a
    where a.bucket = q.bucket and a.object_key = q.object_key
  )

-- name: complete_deletes
delete from trr_assets.delete_queue
where id = any(%(ids)s::bigint[])

-- name: reschedule_deletes
-- One more failed attempt per entry: retry after
-- min(base * 2^(attempts - 1), max) seconds, or give up (state 'failed')
-- at max_attempts. The time is stored, so the backoff survives restarts.
update trr_assets.delete_queue q
set attempts = q.attempts + 1,
    last_error = e.error,
    state = case when q.attempts + 1 >= %(max_attempts)s then 'failed' else 'pending' end,
    next_attempt_at = now() + make_interval(secs => least(
      %(base)s::double precision * power(2::double precision, least(q.attempts, 60)),
      %(max)s::double precision)),
    updated_at = now()
from unnest(%(ids)s::bigint[], %(errors)s::text[]) as e(id, error)
where q.id = e.id
returning q.id, q.bucket, q.object_key, q.attempts, q.state, q.next_attempt_at

-- name: queue_counts
-- Pending and failed entries, of the whole queue or of the given keys.
select
  count(*) filter (where q.state = 'pending') as pending,
  count(*) filter (where q.state = 'failed') as failed
from trr_assets.delete_queue q
where %(buckets)s::text[] is null
   or (q.bucket, q.object_key) in (
     select k.bucket, k.object_key
     from unnest(%(buckets)s::text[], %(keys)s::text[]) as k(bucket, object_key)
   )

-- name: delete_asset_rows
-- The rows' deletion enqueues their objects (trigger show_assets_enqueue_delete).
delete from core.show_assets
where id = any(%(ids)s::uuid[])
returning id, bucket, object_key

-- name: requeue_failed_deletes
-- Give failed entries a fresh start: pending, due now, attempts from zero
-- (last_error is kept until the next attempt replaces it).
update trr_assets.delete_queue
set state = 'pending',
    attempts = 0,
    next_attempt_at = now(),
    updated_at = now()
where state = 'failed'
  and (%(bucket)s::text is null or bucket = %(bucket)s)
