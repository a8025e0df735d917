-- core.shows (if the product has not made it yet), organizations and
-- memberships, and core.shows.org_id with its policies (design notes,
-- example 3). Indexes are built in this transaction: the tables are new,
-- so CREATE INDEX CONCURRENTLY would buy nothing (and cannot run inside a
-- transaction).
create schema if not exists core;
grant usage on schema core to anon, authenticated, service_role;

create table if not exists core.shows (
  id uuid primary key default gen_random_uuid(),
  title text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

alter table core.shows add column if not exists org_id uuid;

create table if not exists core.organizations (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table if not exists core.org_memberships (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references core.organizations(id) on delete cascade,
  user_id uuid not null,
  role text not null default 'member',
  created_at timestamptz not null default now()
);

create index if not exists org_memberships_org_user_idx
  on core.org_memberships (org_id, user_id);
create index if not exists shows_org_id_idx on core.shows (org_id);

-- Supabase-style privileges: the API roles hold table privileges and RLS
-- decides which rows each may touch.
grant select, insert, update, delete on core.shows, core.organizations, core.org_memberships
  to anon, authenticated, service_role;

alter table core.shows enable row level security;
alter table core.organizations enable row level security;
alter table core.org_memberships enable row level security;

do $$
begin
  -- Members read their organizations' shows.
  if not exists (select 1 from pg_policies where schemaname = 'core' and tablename = 'shows'
                 and policyname = 'shows_org_read') then
    create policy shows_org_read on core.shows
      for select
      using (exists (
        select 1 from core.org_memberships om
        where om.org_id = core.shows.org_id and om.user_id = auth.uid()
      ));
  end if;

  -- Admins and editors write their organizations' shows. The notes' single
  -- "for insert, update" policy is two policies: a policy covers one command.
  if not exists (select 1 from pg_policies where schemaname = 'core' and tablename = 'shows'
                 and policyname = 'shows_org_insert') then
    create policy shows_org_insert on core.shows
      for insert
      with check (exists (
        select 1 from core.org_memberships om
        where om.org_id = core.shows.org_id and om.user_id = auth.uid()
          and om.role in ('admin', 'editor')
      ));
  end if;
  if not exists (select 1 from pg_policies where schemaname = 'core' and tablename = 'shows'
                 and policyname = 'shows_org_update') then
    create policy shows_org_update on core.shows
      for update
      using (exists (
        select 1 from core.org_memberships om
        where om.org_id = core.shows.org_id and om.user_id = auth.uid()
          and om.role in ('admin', 'editor')
      ))
      with check (exists (
        select 1 from core.org_memberships om
        where om.org_id = core.shows.org_id and om.user_id = auth.uid()
          and om.role in ('admin', 'editor')
      ));
  end if;

  -- Members read their own organizations; writes are the service's.
  if not exists (select 1 from pg_policies where schemaname = 'core' and tablename = 'organizations'
                 and policyname = 'organizations_member_read') then
    create policy organizations_member_read on core.organizations
      for select
      using (exists (
        select 1 from core.org_memberships om
        where om.org_id = core.organizations.id and om.user_id = auth.uid()
      ));
  end if;

  -- A user reads their own memberships (which is what the policies above
  -- look up); writes are the service's.
  if not exists (select 1 from pg_policies where schemaname = 'core' and tablename = 'org_memberships'
                 and policyname = 'org_memberships_self_read') then
    create policy org_memberships_self_read on core.org_memberships
      for select
      using (user_id = auth.uid());
  end if;
end
$$;
