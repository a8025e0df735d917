-- What the worker did: one row per job run that did something or failed
-- (a drain that found nothing to delete is not recorded), for
-- `trr-assets report` and for operators who would rather query than read
-- logs. Rows older than 30 days are pruned as new ones are recorded.
create table trr_assets.job_runs (
  id bigint generated always as identity primary key,
  job text not null,
  started_at timestamptz not null,
  finished_at timestamptz not null default now(),
  outcome text not null check (outcome in ('ok', 'failed', 'refused')),
  counts jsonb not null default '{}'::jsonb,
  error text,
  worker text not null
);

create index job_runs_finished_at on trr_assets.job_runs (finished_at desc);

revoke all on trr_assets.job_runs from public;
