-- Named queries of the presigner (trr_assets/presign.py).
--
-- With a caller's claims they run in one transaction after
-- `set local role <role>` and presign_set_claims, so Row Level Security
-- decides what that caller may see or write, as it would through PostgREST.
-- Without claims they run as the connecting user: the service itself.

-- name: presign_set_claims
-- The caller's JWT claims for this transaction only, where PostgREST 9+
-- puts them (auth.uid(), auth.role() and auth.jwt() read them).
select set_config('request.jwt.claims', %(claims)s, true)

-- name: presign_find_asset
select id, bucket, object_key
from core.show_assets
where id = %(id)s

-- name: presign_find_assets
-- One query for a whole page of assets (up to 1,000 ids, served by the
-- primary key).
select id, bucket, object_key
from core.show_assets
where id = any(%(ids)s)

-- name: presign_record_upload
-- The row comes before the object: an upload that never happens leaves an
-- orphaned row for reconcile to report, never an object nobody can see.
insert into core.show_assets (show_id, bucket, object_key, content_type, size_bytes, owner_id)
values (%(show_id)s, %(bucket)s, %(key)s, %(content_type)s, %(size_bytes)s, %(owner_id)s)
on conflict (bucket, object_key) do update
  set content_type = excluded.content_type,
      size_bytes = excluded.size_bytes,
      owner_id = excluded.owner_id
returning id
