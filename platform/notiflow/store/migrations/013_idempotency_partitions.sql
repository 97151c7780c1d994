-- Idempotency keys in time partitions of their own (issue 19, docs/record.md): one partition per UTC day, dropped
-- whole once every key in it is past the idempotency window; no more DELETEs of aged keys.
--
-- A unique index of a partitioned table must contain the partition key, so the table is partitioned by a `day`
-- column and (scope, key, day) is unique. A claim made on day D (PostgreSQL's clock, as for created_at) writes
-- its row on day D and a copy, the guard, on each following day its window reaches (one for a window up to 24 h):
-- any later claim of the key within the window is made on one of those days, and meets one of those rows in the
-- unique index. So the database itself keeps a live key unique, under any concurrency, as ON CONFLICT did on the
-- single table: a claim waits for a concurrent uncommitted claim of the same key and day, then sees it. A claim
-- wins when neither its row nor its guards meet a live key (an aged row is taken over, as before); one that wins
-- its day but meets a live key on a guard day (a claim made after midnight by a transaction younger than ours
-- committed first) removes its own rows in the same call. Rows and guards are copies: any live one answers a repeat.
--
-- Upgrade in place: the old table becomes the partition `idempotency_keys_legacy` (day -infinity, below 1970)
-- without copying a row: `day` is added with a constant default (no rewrite), and its (scope, key, day) unique
-- index is built (one pass over the keys of the last window). Its keys stay honoured for their window (the claim
-- also looks for a live key there); retention drops it a window after its newest key.

ALTER TABLE idempotency_keys RENAME TO idempotency_keys_legacy;
ALTER TABLE idempotency_keys_legacy ADD COLUMN day date NOT NULL DEFAULT '-infinity';
CREATE UNIQUE INDEX idempotency_keys_legacy_day ON idempotency_keys_legacy (scope, key, day);

CREATE TABLE idempotency_keys (LIKE idempotency_keys_legacy INCLUDING DEFAULTS) PARTITION BY RANGE (day);
ALTER TABLE idempotency_keys ALTER COLUMN day DROP DEFAULT;
CREATE UNIQUE INDEX idempotency_keys_day ON ONLY idempotency_keys (scope, key, day);
ALTER TABLE idempotency_keys ATTACH PARTITION idempotency_keys_legacy FOR VALUES FROM (MINVALUE) TO ('1970-01-01');
ALTER INDEX idempotency_keys_day ATTACH PARTITION idempotency_keys_legacy_day;

-- Claims the keys of one ingest batch in its transaction: the (scope, key) pairs it won. Rows are written in
-- (scope, key) order, each statement on one day after the other: two batches sharing keys cannot deadlock.
CREATE FUNCTION notiflow_claim_keys(scopes text[], keys text[], hashes text[], nids uuid[], responses jsonb[],
                                    window_s float8)
RETURNS TABLE (scope text, key text) LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    guards int := greatest(1, ceil(window_s / 86400))::int;
    aged timestamptz := now() - make_interval(secs => window_s);
    day_s text[];
    day_k text[];
    guarded_n int;
BEGIN
    WITH claimed AS (
        INSERT INTO idempotency_keys AS i (scope, key, request_hash, notification_id, response, day)
        SELECT u.s, u.k, u.h, u.n, u.r, today
        FROM unnest(scopes, keys, hashes, nids, responses) AS u(s, k, h, n, r)
        WHERE NOT EXISTS (  -- a live key of before the upgrade (no guards)
            SELECT 1 FROM idempotency_keys x
            WHERE x.day < '1970-01-01' AND x.scope = u.s AND x.key = u.k AND x.created_at >= aged)
        ORDER BY u.s, u.k
        ON CONFLICT (scope, key, day) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, notification_id = EXCLUDED.notification_id,
                response = EXCLUDED.response, created_at = now()
            WHERE i.created_at < aged
        RETURNING i.scope, i.key
    )
    SELECT array_agg(c.scope), array_agg(c.key) INTO day_s, day_k FROM claimed c;
    IF day_s IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH mine AS (
        SELECT w.s, w.k, u.h, u.n, u.r FROM unnest(day_s, day_k) AS w(s, k)
        JOIN unnest(scopes, keys, hashes, nids, responses) AS u(s, k, h, n, r) ON u.s = w.s AND u.k = w.k
    ), guarded AS (
        INSERT INTO idempotency_keys AS i (scope, key, request_hash, notification_id, response, day)
        SELECT m.s, m.k, m.h, m.n, m.r, today + g FROM mine m CROSS JOIN generate_series(1, guards) AS g
        ORDER BY g, m.s, m.k
        ON CONFLICT (scope, key, day) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, notification_id = EXCLUDED.notification_id,
                response = EXCLUDED.response, created_at = now()
            WHERE i.created_at < aged
        RETURNING i.scope, i.key
    )
    SELECT g.scope, g.key FROM guarded g GROUP BY g.scope, g.key HAVING count(*) = guards;
    GET DIAGNOSTICS guarded_n = ROW_COUNT;
    IF guarded_n = cardinality(day_s) THEN
        RETURN;
    END IF;
    -- A key won on its day but not on every guard day (rare: two claims across midnight): take back this call's
    -- own rows of it.
    DELETE FROM idempotency_keys i
    USING unnest(day_s, day_k) AS w(s, k), unnest(scopes, keys, nids) AS u(s, k, n)
    WHERE u.s = w.s AND u.k = w.k AND i.scope = w.s AND i.key = w.k AND i.notification_id = u.n
      AND i.day BETWEEN today AND today + guards
      AND (SELECT count(*) FROM idempotency_keys y
           WHERE y.scope = w.s AND y.key = w.k AND y.notification_id = u.n
             AND y.day BETWEEN today AND today + guards) <= guards;
END
$$;
