-- Named queries of the erasure record (trr_assets/erasures.py).

-- name: erasures_intend
-- Before the S3 call: one intent per item, committed on its own. An open
-- intent for the same thing (left by an attempt that died) is taken over.
insert into trr_assets.erasures as e
  (bucket, object_key, kind, version_id, upload_id, size_bytes, deleted_by)
select i.bucket, i.object_key, i.kind, i.version_id, i.upload_id, i.size_bytes, i.deleted_by
from unnest(%(buckets)s::text[], %(keys)s::text[], %(kinds)s::text[], %(version_ids)s::text[],
            %(upload_ids)s::text[], %(sizes)s::bigint[], %(deleted_by)s::text[])
  as i(bucket, object_key, kind, version_id, upload_id, size_bytes, deleted_by)
on conflict (bucket, object_key, kind, coalesce(version_id, ''), coalesce(upload_id, ''))
  where state = 'intended'
do update set intended_at = now(),
              size_bytes = coalesce(excluded.size_bytes, e.size_bytes),
              deleted_by = excluded.deleted_by
returning e.id

-- name: erasures_confirm
-- S3 confirmed these: they are erasures now.
update trr_assets.erasures e
set state = 'done',
    deleted_at = now(),
    marker_version_id = c.marker_version_id
from unnest(%(ids)s::bigint[], %(markers)s::text[]) as c(id, marker_version_id)
where e.id = c.id
  and e.state = 'intended'

-- name: erasures_drop
-- Intents of deletions that did not happen (S3 refused, or the thing is
-- still there when settled).
delete from trr_assets.erasures
where id = any(%(ids)s::bigint[])
  and state = 'intended'

-- name: erasures_record_check
-- The follow-up check of an all_versions delete, recorded as done at once.
insert into trr_assets.erasures
  (bucket, object_key, kind, versions_remaining, deleted_by, state, deleted_at)
select c.bucket, c.object_key, 'no_version_remains', c.remaining, %(deleted_by)s, 'done', now()
from unnest(%(buckets)s::text[], %(keys)s::text[], %(remaining)s::integer[])
  as c(bucket, object_key, remaining)

-- name: erasures_to_settle
-- Intents older than a run of their own could be: left by a process that
-- died between S3's answer and the record. Locked, so two settles never
-- look at the same intent.
select id, bucket, object_key, kind, version_id, upload_id
from trr_assets.erasures
where state = 'intended'
  and intended_at < now() - make_interval(secs => %(older_than_seconds)s)
order by id
limit %(limit)s
for update skip locked

-- name: erasures_list
-- The record, oldest first; each filter is optional.
select bucket, object_key, kind, version_id, upload_id, marker_version_id, size_bytes,
       versions_remaining, deleted_by, deleted_at
from trr_assets.erasures
where state = 'done'
  and (%(bucket)s::text is null or bucket = %(bucket)s)
  and (%(key)s::text is null or object_key = %(key)s)
  and (%(since)s::timestamptz is null or deleted_at >= %(since)s)
order by deleted_at, id
