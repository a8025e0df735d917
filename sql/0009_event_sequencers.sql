-- Event-driven sync (trr-assets listen): the last S3 Event Notification
-- applied to each key.
--
-- S3 delivers notifications at least once and in no particular order; each
-- record carries a `sequencer`, a hex string that grows with the changes of
-- one key (and says nothing across keys). The listener applies an event only
-- when its sequencer is greater than the one recorded here for its key, and
-- records it in the same transaction as the event's effect on
-- core.show_assets, so a duplicate, a redelivery or an event that arrives
-- after a newer one changes nothing.
--
-- A key's entry outlives its object and its row: a removal's sequencer must
-- still make an older, late creation event of the same key stale.
create table trr_assets.event_sequencers (
  bucket text not null,
  object_key text collate "C" not null,
  sequencer text collate "C" not null,
  event_name text not null,          -- of the last applied event, e.g. ObjectCreated:Put
  event_time timestamptz,            -- its eventTime
  applied_at timestamptz not null default now(),
  primary key (bucket, object_key),
  constraint event_sequencers_hex check (sequencer ~ '^[0-9A-F]+$')
);

revoke all on trr_assets.event_sequencers from public;

-- AWS's rule for comparing two sequencers of one key: pad the shorter with
-- zeros on the right, then compare as strings. (Both are upper-case hex; the
-- C collation compares them byte by byte.)
create function trr_assets.sequencer_newer(candidate text, applied text) returns boolean
language sql
immutable strict parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select rpad(candidate, greatest(length(candidate), length(applied)), '0') collate "C"
       > rpad(applied, greatest(length(candidate), length(applied)), '0') collate "C"
$$;

revoke all on function trr_assets.sequencer_newer(text, text) from public;
