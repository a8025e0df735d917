-- Opt-in (trr-assets migrate --enable org-read): only members of a show's
-- organization may read its assets. Replaces the public read policy; the
-- service role still reads everything. Presigned URLs follow at once, since
-- the presigner asks the database under the caller's claims.
drop policy if exists show_assets_public_read on core.show_assets;

create policy show_assets_org_read on core.show_assets
  for select
  using (
    auth.role() = 'service_role'
    or exists (
      select 1
      from core.shows s
      join core.org_memberships om on om.org_id = s.org_id
      where s.id = core.show_assets.show_id
        and om.user_id = auth.uid()
    )
  );
