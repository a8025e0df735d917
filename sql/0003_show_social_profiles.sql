-- core.show_social_profiles (design notes, example 1): public read, writes
-- only for service_role. The notes' "for insert, update, delete" policy is
-- three policies, one per command.
create table if not exists core.show_social_profiles (
  id uuid primary key default gen_random_uuid(),
  show_id uuid not null references core.shows(id) on delete cascade,
  platform text not null,
  handle text not null,
  url text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index if not exists show_social_profiles_show_id_idx
  on core.show_social_profiles (show_id);
create unique index if not exists show_social_profiles_unique
  on core.show_social_profiles (show_id, platform, handle);

grant select, insert, update, delete on core.show_social_profiles
  to anon, authenticated, service_role;

alter table core.show_social_profiles enable row level security;

create policy show_social_profiles_public_read on core.show_social_profiles
  for select using (true);
create policy show_social_profiles_service_insert on core.show_social_profiles
  for insert with check (auth.role() = 'service_role');
create policy show_social_profiles_service_update on core.show_social_profiles
  for update using (auth.role() = 'service_role') with check (auth.role() = 'service_role');
create policy show_social_profiles_service_delete on core.show_social_profiles
  for delete using (auth.role() = 'service_role');

create trigger show_social_profiles_touch_updated_at
  before update on core.show_social_profiles
  for each row execute function trr_assets.touch_updated_at();
