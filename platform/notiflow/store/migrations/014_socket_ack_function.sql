-- Socket acks without a separate lock step (issue 19; docs/record.md "What an acknowledged delivery costs").
--
-- The socket ack statement took each row's lock in a lateral FOR UPDATE step, in key order, then updated the
-- locked rows: two tuple-header writes and two WAL records per acknowledged delivery, ~40 % of its cost. The
-- lock step was there for the order: an UPDATE joined to the pairs may be planned as a hash join, which locks
-- rows in the order it scans deliveries, and could deadlock with another multi-row writer (every one locks in
-- key order: LOCK_IN_KEY_ORDER in store/deliveries.py). On small day partitions PostgreSQL also picked that hash
-- join for its generic plan and scanned every partition (61 ms per 50 pairs at 35 partitions, perf/2026-12-07-
-- plan-cost.md).
--
-- Here the UPDATE itself walks the pairs in key order: a function whose planner settings allow only nested loops
-- over index scans (SET enable_hashjoin, enable_mergejoin, enable_seqscan, enable_material = off, for its own
-- statements: on small or empty partitions the planner would otherwise scan them whole, once), over the pairs
-- materialised sorted, each finding its row by the primary key (a parameterised index scan, pruned to the pair's day partition at run
-- time). Rows are locked in key order as they are updated. platform/tests/integration/test_ack_plans.py checks
-- the plan's shape. The statuses are DeliveryStatus's open ones (models.OPEN_STATUSES); the receipt row is
-- store/receipts.py's outbox_insert (migration 012). Returns the number of deliveries acknowledged.
CREATE FUNCTION notiflow_ack_pairs(users text, ids text, sep text) RETURNS bigint
LANGUAGE plpgsql
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_seqscan = off
SET enable_material = off
AS $$
DECLARE
    n bigint;
BEGIN
    WITH p AS MATERIALIZED (
        SELECT DISTINCT nid, uid
        FROM unnest(string_to_array(ids, ',')::uuid[], string_to_array(users, sep)) AS p(nid, uid)
        ORDER BY nid, uid
    ), acked AS (
        UPDATE deliveries d
        SET status = 'delivered', delivered_at = now(), updated_at = now(), next_attempt_at = NULL
        FROM p
        WHERE d.notification_id = p.nid AND d.user_id = p.uid
          AND d.status IN ('pending', 'dispatched', 'offline', 'retrying', 'dead')
        RETURNING d.notification_id, d.user_id, d.seq, d.receipt
    ), receipts AS (
        INSERT INTO receipt_outbox (notification_id, user_id, seq, channel, kind)
        SELECT notification_id, user_id, seq, 'socket', 'delivered' FROM acked WHERE receipt
    )
    SELECT count(*) INTO n FROM acked;
    RETURN n;
END
$$;
