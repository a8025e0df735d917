-- Opt-in (trr-assets migrate --enable org-read): only members of a show's
-- organization may read its assets. Replaces the public read policy; the
-- service role still reads everything. Presigned URLs follow at once, since
-- the presigner asks the database under the caller's claims.
--
-- Each policy is bound to the role it is for (see 0008_policies_bound_to_roles.sql):
-- a claim of role service_role set by an anon or authenticated session
-- reads nothing more.
drop policy if exists show_assets_public_read on core.show_assets;

drop policy if exists show_assets_org_read on core.show_assets;
create policy show_assets_org_read on core.show_assets
  for select to authenticated
  using (
    exists (
      select 1
      from core.shows s
      join core.org_memberships om on om.org_id = s.org_id
      where s.id = core.show_assets.show_id
        and om.user_id = auth.uid()
    )
  );

drop policy if exists show_assets_service_read on core.show_assets;
create policy show_assets_service_read on core.show_assets
  for select to service_role using (true);
