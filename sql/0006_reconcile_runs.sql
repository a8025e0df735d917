-- History of reconcile runs, dry or not, so drift can be followed over time
-- (reconcile --history).
create table trr_assets.reconcile_runs (
  id bigint generated always as identity primary key,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  dry_run boolean not null,
  buckets text[] not null,
  prefix text not null,
  outcome text not null default 'running'
    check (outcome in ('running', 'clean', 'drift', 'repaired', 'refused', 'failed')),
  counts jsonb not null default '{}'::jsonb,
  run_by text not null,
  error text
);

create index reconcile_runs_started_at on trr_assets.reconcile_runs (started_at desc);

revoke all on trr_assets.reconcile_runs from public;
