-- Proof of erasure: every object, object version, delete marker and
-- incomplete multipart upload that trr-assets deletes, one row each, and for
-- a key deleted with deletes.all_versions the follow-up check that no
-- version of it remains (kind 'no_version_remains').
--
-- A row is written as 'intended' (committed) before the S3 call and becomes
-- 'done' once S3 has confirmed it. A process that dies between the two
-- leaves the intent behind: the next drain or repair looks the object up
-- (trr_assets/erasures.py, settle) and marks it done if it is gone, or drops
-- the intent if it is not. Only 'done' rows are erasures.
--
-- Small on purpose: no payloads, no metadata beyond the size when known.
create table trr_assets.erasures (
  id bigint generated always as identity primary key,
  bucket text not null,
  object_key text collate "C" not null,
  kind text not null
    check (kind in ('object', 'version', 'delete_marker', 'upload', 'no_version_remains')),
  version_id text,          -- the version or delete marker removed
  upload_id text,           -- the multipart upload aborted
  marker_version_id text,   -- a plain delete on a versioned bucket: the delete marker S3 placed
  size_bytes bigint,        -- when known
  versions_remaining integer,  -- the follow-up check: versions still listed (0 = none)
  deleted_by text not null,
  state text not null default 'intended' check (state in ('intended', 'done')),
  intended_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint erasures_done_has_time check (state = 'intended' or deleted_at is not null)
);

-- Look-up by key (erasures --bucket B --key K), and by time (--since).
create index erasures_key on trr_assets.erasures (bucket, object_key);
create index erasures_deleted_at on trr_assets.erasures (deleted_at) where state = 'done';
-- One open intent per thing to delete: a retry after a crash takes over the
-- intent the crashed attempt left, so the deletion is recorded once.
create unique index erasures_one_intent on trr_assets.erasures
  (bucket, object_key, kind, coalesce(version_id, ''), coalesce(upload_id, ''))
  where state = 'intended';

revoke all on trr_assets.erasures from public;
