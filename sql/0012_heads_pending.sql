-- Rows that sync wrote from the listing alone (sync.metadata = "listing"):
-- their content type is a guess from the key's extension and their owner id
-- is not known until the object is HEADed. A later sync pass with
-- sync.metadata = "head" HEADs these keys, rewrites the rows whose metadata
-- differs, and takes them off this list; complete rows are never on it, so
-- that pass leaves them alone.
--
-- No foreign key to core.show_assets: it would forbid TRUNCATE of that
-- table. An entry whose row is gone is dropped by the next "head" pass.
create table trr_assets.heads_pending (
  bucket text not null,
  object_key text collate "C" not null,
  primary key (bucket, object_key)
);

revoke all on trr_assets.heads_pending from public;
