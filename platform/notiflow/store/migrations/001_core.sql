-- The system of record. Every accepted notification lives here before the client hears 202.

CREATE TABLE notifications (
    id           uuid PRIMARY KEY,
    event        text        NOT NULL,
    payload      jsonb       NOT NULL,
    webhook_url  text,
    expires_at   timestamptz,
    recipients   integer     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Outbox flag: set once the notification's stream entries were XADDed. The reconciler
    -- re-enqueues notifications that stayed unset past a grace period (a crash between commit and XADD).
    enqueued     boolean     NOT NULL DEFAULT false
);
CREATE INDEX notifications_outbox ON notifications (created_at) WHERE NOT enqueued;

-- Per-user sequence counter. Its row lock is held until commit, so a user's seqs commit in order
-- and a keyset reader can never see seq N+1 before seq N.
CREATE TABLE user_seqs (
    user_id   text   PRIMARY KEY,
    last_seq  bigint NOT NULL
);

CREATE TABLE deliveries (
    notification_id  uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    user_id          text        NOT NULL,
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
    PRIMARY KEY (notification_id, user_id),
    CONSTRAINT deliveries_status_ok CHECK
        (status IN ('pending', 'dispatched', 'offline', 'retrying', 'delivered', 'dead', 'expired')),
    CONSTRAINT deliveries_webhook_status_ok CHECK
        (webhook_status IS NULL OR webhook_status IN ('pending', 'retrying', 'succeeded', 'dead', 'expired'))
);
CREATE UNIQUE INDEX deliveries_user_seq ON deliveries (user_id, seq);
-- The offline queue: open deliveries of one user in seq order.
CREATE INDEX deliveries_offline ON deliveries (user_id, seq)
    WHERE status IN ('pending', 'dispatched', 'offline', 'retrying');
-- The reconciler: work that must be in the stream or the retry schedule.
CREATE INDEX deliveries_work ON deliveries (notification_id, user_id)
    WHERE status IN ('pending', 'retrying') OR webhook_status IN ('pending', 'retrying');

CREATE TABLE delivery_attempts (
    id               bigserial   PRIMARY KEY,
    notification_id  uuid        NOT NULL,
    user_id          text        NOT NULL,
    channel          text        NOT NULL,
    attempt          integer     NOT NULL,
    outcome          text        NOT NULL,
    error            text,
    node_id          text        NOT NULL,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (notification_id, user_id, id);

CREATE TABLE idempotency_keys (
    key              text        PRIMARY KEY,
    request_hash     text        NOT NULL,
    notification_id  uuid        NOT NULL,
    response         jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

CREATE TABLE dlq (
    id               bigserial   PRIMARY KEY,
    notification_id  uuid        NOT NULL,
    user_id          text        NOT NULL,
    channel          text        NOT NULL,
    reason           text        NOT NULL,
    last_error       text,
    attempts         integer     NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now(),
    replayed_at      timestamptz,
    -- One row per delivery and channel: dead-lettering the same delivery twice changes nothing.
    CONSTRAINT dlq_one_per_delivery UNIQUE (notification_id, user_id, channel)
);
CREATE INDEX dlq_listing ON dlq (id) WHERE replayed_at IS NULL;

-- Stream entries that could not even be parsed (no delivery to name): kept verbatim for operators.
CREATE TABLE poison_entries (
    id          bigserial   PRIMARY KEY,
    stream_id   text        NOT NULL,
    fields      jsonb       NOT NULL,
    reason      text        NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
