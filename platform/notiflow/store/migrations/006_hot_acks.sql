-- Acks and hand-offs rewrite a delivery in place (HOT updates: no new index entries, no index
-- maintenance): the socket channel's state (`status`) is in no index, neither as a key nor in a
-- predicate. PostgreSQL updates a row HOT only when no indexed column changes and the row's page has room.
-- * The offline queue reads deliveries_user_seq (user_id, seq) and filters the state on the row.
-- * The reconciler finds socket work that was put back (retrying, re-enqueued, replayed) through its due
--   time, which the acks and hand-offs leave NULL; fresh work through notifications_created and a cursor
--   (reconciler_cursors); the webhook channel's open work through its own partial index.
-- * Expiry goes through the notifications that expire, with a cursor too.
DROP INDEX IF EXISTS deliveries_offline;
DROP INDEX IF EXISTS deliveries_work;
CREATE INDEX deliveries_webhook_work ON deliveries (notification_id, user_id)
    WHERE webhook_status IN ('pending', 'retrying');
CREATE INDEX deliveries_socket_due ON deliveries (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX notifications_expiry ON notifications (expires_at) WHERE expires_at IS NOT NULL;
-- Room on every new page for a row's next versions (a hand-off, an ack).
ALTER TABLE deliveries SET (fillfactor = 50);

-- Where the reconciler's one-pass sweeps stand: `fresh` (notifications by created_at, id: their pending
-- socket deliveries are looked at once, when they become stale), `expiry` and `expiry_late` (notifications
-- by expires_at, 2 s and 60 s behind now).
CREATE TABLE reconciler_cursors (
    name  text        PRIMARY KEY,
    at    timestamptz NOT NULL,
    id    uuid        NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000'
);
-- (The old sweeps covered what expired before this migration; an hour back covers what they had not reached.)
INSERT INTO reconciler_cursors (name, at)
VALUES ('fresh', now()), ('expiry', now() - interval '1 hour'), ('expiry_late', now() - interval '1 hour');
-- Pending socket work that exists already is put where the stuck sweep looks (the fresh cursor starts now).
UPDATE deliveries SET next_attempt_at = now() WHERE status = 'pending' AND next_attempt_at IS NULL;
