-- Collapse keys (issue 23, docs/contract.md "Collapse keys"): a newer notification with the same key for the same
-- user replaces the older one while it is unacknowledged; the older delivery's state becomes `replaced`.
--
-- * deliveries.collapse_key: the key, on the delivery (so a user's older deliveries of a key are found by
--   (user_id, collapse_key) without a join through notifications: a key sent to many users has many
--   notifications). Nullable, no default: adding it rewrites nothing, and a row without a key stores only its
--   null bit (a delivery row has a null bitmap already, webhook_status is mostly NULL; it stays 2 bytes).
-- * deliveries_collapse: a partial index that only rows with a key pay for. It names no state column: an ack
--   or a hand-off of a keyed delivery stays a HOT update (migration 006). On the partitioned parent: every
--   partition gets one (legacy, the day partitions, and each day attached later, see store/partitions.py).
-- * The state check gains `replaced`. The constraint of the partitioned parent is inherited by every
--   partition (conislocal is false on partitions), so dropping it on the parent drops it everywhere and adding
--   it adds it everywhere; the day tables created later copy it from deliveries_v7 (CREATE TABLE ... LIKE
--   ... INCLUDING CONSTRAINTS).
-- Cost on a large database: the migration is one transaction holding ACCESS EXCLUSIVE on deliveries (the
-- constraint swap) while the check is validated and the (empty) partial index is built: one scan of every
-- partition each. (NOT VALID then VALIDATE would save nothing inside one transaction.)

ALTER TABLE deliveries ADD COLUMN collapse_key text;

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_ok;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_ok CHECK
    (status IN ('pending', 'dispatched', 'offline', 'retrying', 'delivered', 'dead', 'expired', 'replaced'));

CREATE INDEX deliveries_collapse ON deliveries (user_id, collapse_key, seq) WHERE collapse_key IS NOT NULL;
