-- The record in time partitions, and expiry for every notification (issue 19; docs/record.md).
--
-- notifications, deliveries and delivery_attempts become partitioned tables, LIST-partitioned by `era`:
-- * era 0, the legacy partition: the table as it was (renamed, attached as it is, not rewritten). It holds
--   the rows written before this migration, whose ids are random (version 4), and is dropped whole by
--   retention once everything in it has expired.
-- * era 1: RANGE-partitioned by notification id. Ids are version 7 UUIDs (ids.py): their first 48 bits are
--   the creation time in ms, so a range of ids is a span of time. One partition per UTC day, created ahead
--   of need and dropped whole by retention (store/partitions.py); `notiflow migrate` creates the first ones.
-- Writers set era from the id (notiflow_era); a row inserted without it goes to the legacy partition.
--
-- Every notification expires: rows from before get created_at + the retention period (NOTIFLOW_RETENTION_DAYS,
-- passed by `notiflow migrate` as notiflow.retention_s; 30 days when absent).
-- Cost on a large database: one UPDATE of the notifications without an expiry, and a scan of each legacy table
-- (the SET NOT NULL and the ATTACH check their rows) while it is locked; no table is rewritten.

CREATE FUNCTION notiflow_era(id uuid) RETURNS smallint LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN get_byte(uuid_send(id), 6) >> 4 = 7 THEN 1 ELSE 0 END::smallint $$;

UPDATE notifications
SET expires_at = created_at
    + make_interval(secs => coalesce(nullif(current_setting('notiflow.retention_s', true), ''), '2592000')::float8)
WHERE expires_at IS NULL;

-- notifications ---------------------------------------------------------------------------------------------
ALTER TABLE notifications RENAME TO notifications_legacy;
ALTER TABLE notifications_legacy ALTER COLUMN expires_at SET NOT NULL;
ALTER TABLE notifications_legacy ADD COLUMN era smallint NOT NULL DEFAULT 0;

CREATE TABLE notifications (
    id           uuid        NOT NULL,
    event        text        NOT NULL,
    payload      jsonb       NOT NULL,
    webhook_url  text,
    era          smallint    NOT NULL DEFAULT 0,  -- here: in the padding before expires_at
    expires_at   timestamptz NOT NULL,
    recipients   integer     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    enqueued     boolean     NOT NULL DEFAULT false,
    txid         bigint      DEFAULT pg_current_xact_id()::text::bigint
) PARTITION BY LIST (era);
CREATE TABLE notifications_v7 PARTITION OF notifications FOR VALUES IN (1) PARTITION BY RANGE (id);
ALTER TABLE notifications_v7 ADD CONSTRAINT notifications_v7_pkey PRIMARY KEY (id);
CREATE INDEX notifications_v7_outbox ON notifications_v7 (created_at) WHERE NOT enqueued;
CREATE INDEX notifications_v7_expiry ON notifications_v7 (expires_at);
CREATE INDEX notifications_v7_txid ON notifications_v7 (txid, id);
ALTER TABLE notifications ATTACH PARTITION notifications_legacy FOR VALUES IN (0);

-- deliveries ------------------------------------------------------------------------------------------------
ALTER TABLE deliveries RENAME TO deliveries_legacy;
ALTER TABLE deliveries_legacy ADD COLUMN era smallint NOT NULL DEFAULT 0;

CREATE TABLE deliveries (
    notification_id  uuid        NOT NULL,
    user_id          text        NOT NULL,
    era              smallint    NOT NULL DEFAULT 0,  -- here: in the padding before seq, no wider rows
    seq              bigint      NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    webhook_status   text,
    attempts         integer     NOT NULL DEFAULT 0,
    webhook_attempts integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    webhook_next_at  timestamptz,
    last_error       text,
    delivered_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deliveries_status_ok CHECK
        (status IN ('pending', 'dispatched', 'offline', 'retrying', 'delivered', 'dead', 'expired')),
    CONSTRAINT deliveries_webhook_status_ok CHECK
        (webhook_status IS NULL OR webhook_status IN ('pending', 'retrying', 'succeeded', 'dead', 'expired'))
) PARTITION BY LIST (era);
CREATE TABLE deliveries_v7 PARTITION OF deliveries FOR VALUES IN (1) PARTITION BY RANGE (notification_id);
ALTER TABLE deliveries_v7 ADD CONSTRAINT deliveries_v7_pkey PRIMARY KEY (notification_id, user_id);
-- The offline queue and acks up to a seq: per partition (user_id, seq); a user's queue is a Merge Append of them.
-- Not unique across partitions (a unique index must contain the partition key); user_seqs keeps seqs unique.
CREATE INDEX deliveries_v7_user_seq ON deliveries_v7 (user_id, seq);
CREATE INDEX deliveries_v7_webhook_work ON deliveries_v7 (notification_id, user_id)
    WHERE webhook_status IN ('pending', 'retrying');
CREATE INDEX deliveries_v7_socket_due ON deliveries_v7 (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
ALTER TABLE deliveries ATTACH PARTITION deliveries_legacy FOR VALUES IN (0);

-- delivery_attempts -----------------------------------------------------------------------------------------
ALTER TABLE delivery_attempts RENAME TO delivery_attempts_legacy;
ALTER TABLE delivery_attempts_legacy ADD COLUMN era smallint NOT NULL DEFAULT 0;
-- The id sequence outlives the legacy table (dropped by retention one day).
ALTER SEQUENCE delivery_attempts_id_seq OWNED BY NONE;

CREATE TABLE delivery_attempts (
    id               bigint      NOT NULL DEFAULT nextval('delivery_attempts_id_seq'),
    notification_id  uuid        NOT NULL,
    user_id          text        NOT NULL,
    era              smallint    NOT NULL DEFAULT 0,
    channel          text        NOT NULL,
    attempt          integer     NOT NULL,
    outcome          text        NOT NULL,
    error            text,
    node_id          text        NOT NULL,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL
) PARTITION BY LIST (era);
CREATE TABLE delivery_attempts_v7 PARTITION OF delivery_attempts FOR VALUES IN (1)
    PARTITION BY RANGE (notification_id);
CREATE INDEX delivery_attempts_v7_delivery ON delivery_attempts_v7 (notification_id, user_id, id);
ALTER TABLE delivery_attempts ATTACH PARTITION delivery_attempts_legacy FOR VALUES IN (0);

-- The DLQ is not partitioned (few rows: dead deliveries only): retention deletes a partition's DLQ rows as it
-- drops the partition, by notification id range through dlq_one_per_delivery (notification_id, user_id, channel).
