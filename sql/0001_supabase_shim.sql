-- What a Supabase database already has, created only where missing, so the
-- same migrations apply on a bare PostgreSQL 15+ and on Supabase.
--
-- Roles: anon, authenticated, service_role (NOLOGIN). service_role bypasses
-- RLS as it does on Supabase (when the migrating user may grant that).
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if not exists (select 1 from pg_roles where rolname = r) then
      begin
        if r = 'service_role' then
          begin
            execute 'create role service_role nologin noinherit bypassrls';
          exception when insufficient_privilege then
            execute 'create role service_role nologin noinherit';
          end;
        else
          execute format('create role %I nologin noinherit', r);
        end if;
      exception when duplicate_object or unique_violation then
        null;  -- created meanwhile by a migration of another database in this cluster
      end;
    end if;
    -- The connecting user must be able to SET ROLE to each, as PostgREST's
    -- authenticator can. A superuser already can; others get membership.
    if not exists (select 1 from pg_roles where rolname = current_user and rolsuper) then
      begin
        execute format('grant %I to %I', r, current_user);
      exception when others then
        raise notice 'trr-assets: could not grant % to %: %', r, current_user, sqlerrm;
      end;
    end if;
  end loop;
end
$$;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- auth.uid(), auth.role(), auth.jwt() read the claims the way PostgREST sets
-- them: the whole JWT as JSON in request.jwt.claims (PostgREST 9+), or one
-- setting per claim in request.jwt.claim.<name> (older PostgREST).
do $$
begin
  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid
    language sql stable
    as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
      )::uuid
    $f$;
  end if;
  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text
    language sql stable
    as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
      )::text
    $f$;
  end if;
  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb
    language sql stable
    as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
      )::jsonb
    $f$;
  end if;
end
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;

-- trr-assets' own tables (migrations, delete outbox, reconcile history) live
-- in their own schema, which none of the API roles can see.
create schema if not exists trr_assets;
revoke all on schema trr_assets from public;

create or replace function trr_assets.touch_updated_at() returns trigger
language plpgsql
as $$
begin
  new.updated_at := now();
  return new;
end
$$;
