-- core.show_assets (design notes, example 2): S3 object metadata, one row
-- per (bucket, object_key).
--
-- object_key is collated "C": it sorts in byte order, which is S3's listing
-- order, so the unique index on (bucket, object_key) serves the ordered
-- scan that sync and reconcile merge-join against a listing.
create table core.show_assets (
  id uuid primary key default gen_random_uuid(),
  show_id uuid not null references core.shows(id) on delete cascade,
  bucket text not null,
  object_key text collate "C" not null,
  content_type text,
  size_bytes bigint,
  checksum text,  -- the object's ETag without its quotes
  owner_id uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint show_assets_key_length check (octet_length(object_key) between 1 and 1024),
  constraint show_assets_size_nonnegative check (size_bytes >= 0)
);

create unique index show_assets_unique on core.show_assets (bucket, object_key);
create index show_assets_show_id_idx on core.show_assets (show_id);

grant select, insert, update, delete on core.show_assets to anon, authenticated, service_role;

alter table core.show_assets enable row level security;

-- Read: public (the org-scoped alternative is sql/optional/org-read.sql).
create policy show_assets_public_read on core.show_assets
  for select using (true);

-- Write: service role only (uploads, metadata updates, deletes).
create policy show_assets_service_insert on core.show_assets
  for insert with check (auth.role() = 'service_role');
create policy show_assets_service_update on core.show_assets
  for update using (auth.role() = 'service_role') with check (auth.role() = 'service_role');
create policy show_assets_service_delete on core.show_assets
  for delete using (auth.role() = 'service_role');

create trigger show_assets_touch_updated_at
  before update on core.show_assets
  for each row execute function trr_assets.touch_updated_at();
