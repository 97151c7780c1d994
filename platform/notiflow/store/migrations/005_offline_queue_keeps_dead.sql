-- SPEC §4: the offline queue lists every unacknowledged, unexpired socket delivery, `dead` ones included
-- (a DLQ row tells operators; the queue still serves the user). The partial index follows the listing's
-- predicate (models.OPEN_STATUSES), or the planner could no longer use it for the offline read and the acks.
DROP INDEX IF EXISTS deliveries_offline;
CREATE INDEX deliveries_offline ON deliveries (user_id, seq)
    WHERE status IN ('pending', 'dispatched', 'offline', 'retrying', 'dead');
