-- The fresh sweep follows commit order, not begin order (issue 24, window 1). created_at is fixed when an
-- ingest transaction begins; one that waits behind a lock on a user's seq counter may commit long after
-- others that began later, and a cursor on created_at had passed it by then: its pending deliveries were
-- never looked at. Each notification now carries the id of the transaction that inserted it (`txid`, the
-- 64-bit form of pg_current_xact_id()); every transaction whose id is below the oldest one still running
-- (pg_snapshot_xmin) has ended, so a cursor on (txid, id) kept below that bound never passes a commit that
-- is still to come.
-- Added without a default first and the default set after: no rewrite of the table. Rows from before have no
-- txid and stay out of the sweep; their pending socket work is put where the stale sweep looks, as 006 did.
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS txid bigint;
ALTER TABLE notifications ALTER COLUMN txid SET DEFAULT pg_current_xact_id()::text::bigint;
CREATE INDEX IF NOT EXISTS notifications_txid ON notifications (txid, id);
ALTER TABLE reconciler_cursors ADD COLUMN IF NOT EXISTS txid bigint NOT NULL DEFAULT 0;
UPDATE deliveries SET next_attempt_at = now() WHERE status = 'pending' AND next_attempt_at IS NULL;
