-- Delivery receipts (issue 23; docs/contract.md, "Delivery receipts").
--
-- A notification may name a `status_url`; each of its deliveries then carries `receipt = true`, copied at
-- insert. The statements that move a delivery to a terminal state (acks, recorded outcomes, the expiry sweeps)
-- write one receipt_outbox row per flagged delivery and channel in the same statement, so an event is durable
-- exactly when its state change is; the retry worker's receipt sender posts them (service/receipts.py).
--
-- `receipt` is NULL, not false, for deliveries that asked for nothing: deliveries rows have nullable columns,
-- so their null bitmap exists already and a NULL takes no byte; adding a nullable column without a default
-- rewrites no table (every partition gets it from the parent). Not indexed: acks stay HOT (migration 006).
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS status_url text;
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS receipt boolean;

-- Events waiting to be sent. Few rows (only deliveries that asked, only until their 2xx), not partitioned: a
-- row is deleted once a 2xx answered it, or when the sender gives up (NOTIFLOW_MAX_RETRIES, as the DLQ).
CREATE TABLE receipt_outbox (
    id               bigserial   PRIMARY KEY,
    notification_id  uuid        NOT NULL,
    user_id          text        NOT NULL,
    seq              bigint      NOT NULL,
    channel          text        NOT NULL,
    kind             text        NOT NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    next_at          timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    CONSTRAINT receipt_outbox_channel_ok CHECK (channel IN ('socket', 'webhook')),
    CONSTRAINT receipt_outbox_kind_ok CHECK (kind IN ('delivered', 'dead', 'expired', 'replaced'))
);
-- The sender's page: due rows, oldest due first.
CREATE INDEX receipt_outbox_due ON receipt_outbox (next_at, id);
