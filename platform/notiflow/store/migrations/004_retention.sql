-- Retention (store/retention.py) walks notifications oldest first and removes what is finished.
-- Plain CREATE INDEX (migrations run in a transaction): on a large existing table it holds off writes
-- while it builds; build it by hand with CREATE INDEX CONCURRENTLY first if that matters.
CREATE INDEX IF NOT EXISTS notifications_created ON notifications (created_at);
-- Replayed DLQ rows, by when they were replayed.
CREATE INDEX IF NOT EXISTS dlq_replayed ON dlq (replayed_at) WHERE replayed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS poison_entries_age ON poison_entries (failed_at);
