-- The outbox, one row per ingest commit instead of a flag per notification (issue 19; docs/record.md).
--
-- A notification was committed with `enqueued = false` and, once the gateway had XADDed its stream entries,
-- updated to true. The flag sat in the predicate of the partial index notifications_v7_outbox, so that update was
-- never HOT: a new version of the whole row (payload included) and an entry in each of the table's indexes, per
-- notification. Measured alone: 16-17 µs of backend CPU per unicast notification, about what its insert costs.
-- Now the ingest statement writes one row here per commit, naming the commit's notifications, and the gateway
-- deletes it once every one of them is on the stream (store/ingest.py clear_outbox); the reconciler reads the rows
-- older than NOTIFLOW_OUTBOX_GRACE_S, as it read the flag. A row holds only commits in flight: a small table.
--
-- Upgrade in place: every notification still flagged gets a row of its own. The flag column stays, unused, so
-- that a gateway of before this migration still running meanwhile does not fail on it (its commits write no row
-- here: the reconciler's fresh sweep still finds their pending work after NOTIFLOW_STUCK_AFTER_S); a later
-- migration may drop it. Its partial indexes go: nothing reads them any more.
CREATE TABLE ingest_outbox (
    id                uuid        PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    notification_ids  uuid[]      NOT NULL
);
CREATE INDEX ingest_outbox_age ON ingest_outbox (created_at);

INSERT INTO ingest_outbox (id, created_at, notification_ids)
SELECT gen_random_uuid(), created_at, ARRAY[id] FROM notifications WHERE NOT enqueued;

DROP INDEX IF EXISTS notifications_v7_outbox;
DROP INDEX IF EXISTS notifications_outbox;
