-- The listener prunes trr_assets.event_sequencers (sql/0009): an entry
-- whose event was applied longer ago than events.sequencer_retention_days
-- can go, since no event older than it can still be waiting in a queue
-- (SQS keeps a message 14 days at most). Without pruning, the table keeps
-- one row for every key that ever had an event, removed keys included.
create index event_sequencers_applied_at on trr_assets.event_sequencers (applied_at);
