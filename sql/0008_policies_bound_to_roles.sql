-- Policies bound to database roles, not only to claims a session can set.
--
-- Any session may call set_config('request.jwt.claims', ...) or
-- set_config('request.jwt.claim.role', ...) for itself, so a policy that
-- tests only auth.role() = 'service_role' lets a session running as anon or
-- authenticated write by claiming to be the service. The role a session
-- runs as is different: PostgREST chooses it after checking the JWT's
-- signature, and SET ROLE to service_role needs membership in it. So:
--
-- 1. The write policies of core.show_assets and core.show_social_profiles
--    apply to the service_role role alone (and still ask for the claim, as
--    before). Reads are unchanged. Where service_role has BYPASSRLS (as on
--    Supabase) it writes as it always did; where it has not, these
--    policies are what let it write.
-- 2. The org policies of core.shows, core.organizations and
--    core.org_memberships apply to authenticated alone: anon has no user,
--    and a forged "sub" no longer makes an anon session a member. An
--    authenticated session can still name any user in its claims; see
--    docs/security.md for what auth.uid() can and cannot be trusted for.
-- 3. The opt-in org-scoped read of core.show_assets (sql/optional/org-read.sql),
--    where it was enabled, is bound the same way: members (authenticated)
--    read their organizations' assets, service_role reads all; the file
--    itself now makes the same policies.
-- 4. Our shim's auth.uid(), auth.role() and auth.jwt() read request.jwt.claims
--    (what PostgREST 9+ sets for the request) first; the per-claim
--    request.jwt.claim.* settings of older PostgREST are read only when
--    request.jwt.claims is absent, so a stale or forged legacy setting cannot
--    override the request's claims. Functions that are not the shim's (those
--    of Supabase, which owns them) are left as they are.

-- 1. Writes of assets and social profiles: service_role only.
do $$
declare
  t text;
begin
  foreach t in array array['show_assets', 'show_social_profiles'] loop
    execute format('drop policy if exists %I on core.%I', t || '_service_insert', t);
    execute format('drop policy if exists %I on core.%I', t || '_service_update', t);
    execute format('drop policy if exists %I on core.%I', t || '_service_delete', t);
    execute format($q$create policy %I on core.%I for insert to service_role
                      with check (auth.role() = 'service_role')$q$, t || '_service_insert', t);
    execute format($q$create policy %I on core.%I for update to service_role
                      using (auth.role() = 'service_role') with check (auth.role() = 'service_role')$q$,
                   t || '_service_update', t);
    execute format($q$create policy %I on core.%I for delete to service_role
                      using (auth.role() = 'service_role')$q$, t || '_service_delete', t);
  end loop;
end
$$;

-- 2. and 3. Policies that rest on auth.uid(): authenticated only.
do $$
declare
  p record;
begin
  for p in
    select schemaname, tablename, policyname from pg_policies
    where (schemaname, tablename, policyname) in (
      ('core', 'shows', 'shows_org_read'),
      ('core', 'shows', 'shows_org_insert'),
      ('core', 'shows', 'shows_org_update'),
      ('core', 'organizations', 'organizations_member_read'),
      ('core', 'org_memberships', 'org_memberships_self_read'))
  loop
    execute format('alter policy %I on %I.%I to authenticated', p.policyname, p.schemaname, p.tablename);
  end loop;

  if exists (select 1 from pg_policies where schemaname = 'core' and tablename = 'show_assets'
             and policyname = 'show_assets_org_read') then
    drop policy show_assets_org_read on core.show_assets;
    create policy show_assets_org_read on core.show_assets
      for select to authenticated
      using (exists (
        select 1
        from core.shows s
        join core.org_memberships om on om.org_id = s.org_id
        where s.id = core.show_assets.show_id
          and om.user_id = auth.uid()
      ));
    drop policy if exists show_assets_service_read on core.show_assets;
    create policy show_assets_service_read on core.show_assets
      for select to service_role using (true);
  end if;
  -- Those are now the policies sql/optional/org-read.sql makes: its record
  -- takes that file's checksum, so migrate does not report it as changed.
  update trr_assets.schema_migrations
     set checksum = '83e2061127942845e6822e7dd3986cf3b4bf1d286b238c6242ae39de86b726a2'
   where name = 'optional/org-read';
end
$$;

-- 4. The shim's auth functions: request.jwt.claims first. A function is the
-- shim's when its body is still the one 0001_supabase_shim.sql wrote.
do $$
declare
  shim constant jsonb := jsonb_build_object(
    'uid', $b$ select coalesce( nullif(current_setting('request.jwt.claim.sub', true), ''), nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub' )::uuid $b$,
    'role', $b$ select coalesce( nullif(current_setting('request.jwt.claim.role', true), ''), nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role' )::text $b$,
    'jwt', $b$ select coalesce( nullif(current_setting('request.jwt.claim', true), ''), nullif(current_setting('request.jwt.claims', true), '') )::jsonb $b$);
  body text;
begin
  foreach body in array array['uid', 'role', 'jwt'] loop
    if (select trim(regexp_replace(prosrc, '\s+', ' ', 'g'))
        from pg_proc where oid = to_regprocedure(format('auth.%s()', body))) is distinct from trim(shim ->> body) then
      raise notice 'trr-assets: auth.%() is not the shim''s; left as it is', body;
      continue;
    end if;
    if body = 'jwt' then
      create or replace function auth.jwt() returns jsonb
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claims', true), ''),
          nullif(current_setting('request.jwt.claim', true), '')
        )::jsonb
      $f$;
    else
      -- auth.uid() is the claim sub as uuid, auth.role() the claim role as text.
      execute format($q$
        create or replace function auth.%1$s() returns %2$s
        language sql stable
        as $f$
          select case
            when nullif(current_setting('request.jwt.claims', true), '') is not null
              then current_setting('request.jwt.claims', true)::jsonb ->> %3$L
            else nullif(current_setting(%4$L, true), '')
          end::%2$s
        $f$
      $q$, body, case body when 'uid' then 'uuid' else 'text' end,
         case body when 'uid' then 'sub' else 'role' end,
         'request.jwt.claim.' || case body when 'uid' then 'sub' else 'role' end);
    end if;
    execute format('comment on function auth.%s() is %L', body,
      'trr-assets shim: reads request.jwt.claims, else the legacy request.jwt.claim.* settings');
  end loop;
end
$$;
