-- Named queries of what operators read: metrics, health, `deletes status`,
-- `report`, `doctor` (trr_assets/status.py).

-- name: metrics_snapshot
-- Everything /metrics reads from the database, in one round trip: the
-- delete queue, and the findings of the last completed reconcile run (a run
-- that failed part way counted only part of its buckets: it is passed over).
select
  (select count(*) from trr_assets.delete_queue where state = 'pending') as pending,
  (select count(*) from trr_assets.delete_queue where state = 'failed') as failed,
  (select extract(epoch from now() - min(enqueued_at))::double precision
     from trr_assets.delete_queue where state = 'pending') as oldest_age_seconds,
  (select jsonb_build_object('buckets', r.buckets, 'counts', r.counts,
                             'finished_at', extract(epoch from r.finished_at)::double precision)
     from trr_assets.reconcile_runs r
     where r.outcome in ('clean', 'drift', 'repaired', 'refused')
     order by r.started_at desc, r.id desc
     limit 1) as last_reconcile

-- name: health_check
select 1

-- name: failed_deletes
-- Deletions that gave up, newest first, with the error S3 gave last.
select bucket, object_key, asset_id, attempts, last_error, enqueued_at, updated_at
from trr_assets.delete_queue
where state = 'failed'
order by updated_at desc, id desc
limit %(limit)s

-- name: record_job_run
-- One run of a worker job; runs older than 30 days leave as new ones come.
with pruned as (
  delete from trr_assets.job_runs where finished_at < now() - interval '30 days'
)
insert into trr_assets.job_runs (job, started_at, outcome, counts, error, worker)
values (%(job)s, %(started_at)s, %(outcome)s, %(counts)s, %(error)s, %(worker)s)

-- name: recent_job_runs
select job, started_at, finished_at, outcome, counts, error, worker
from trr_assets.job_runs
order by finished_at desc, id desc
limit %(limit)s

-- name: reconcile_runs_for_report
-- The recorded reconcile runs, oldest first (the drift chart's x axis).
select id, started_at, finished_at, dry_run, buckets, outcome, counts, error
from (
  select * from trr_assets.reconcile_runs
  where finished_at is not null
  order by started_at desc, id desc
  limit %(limit)s
) r
order by started_at, id
