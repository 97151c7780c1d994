-- Topics (issue 23, docs/contract.md "Topics"): subscriptions, and topic notifications expanded after their 202.
--
-- topic_clock orders subscription changes against topic sends. nextval is monotonic in real time: a subscribe
-- or unsubscribe that starts after a send's 202 draws a larger value than the send's cutoff. A subscription is an
-- interval [since, until) of that clock; unsubscribing closes it (a tombstone, kept while an unfinished send may
-- still need it), subscribing again opens a new one. A send's recipients are the users whose interval holds its
-- cutoff: the subscribers at acceptance.
CREATE SEQUENCE topic_clock;

CREATE TABLE topic_subscriptions (
    topic     text        NOT NULL,
    user_id   text        NOT NULL,
    since     bigint      NOT NULL,
    until     bigint,                 -- NULL: subscribed now
    ended_at  timestamptz,            -- when it was closed (tombstones are purged a while after)
    PRIMARY KEY (topic, user_id, since),
    CONSTRAINT topic_subscriptions_interval CHECK (until IS NULL OR until > since)
);
-- At most one open interval per user and topic; the subscriber list pages through it.
CREATE UNIQUE INDEX topic_subscriptions_open ON topic_subscriptions (topic, user_id) WHERE until IS NULL;
CREATE INDEX topic_subscriptions_tombstones ON topic_subscriptions (ended_at) WHERE until IS NOT NULL;

-- One row per topic notification: its cutoff on topic_clock and the expansion's progress (keyset by user id).
-- expanded_after is committed with each page's deliveries; routed_after follows once the page is on the stream.
-- done: every subscriber has a delivery and it is on the stream.
CREATE TABLE topic_sends (
    notification_id  uuid        PRIMARY KEY,
    topic            text        NOT NULL,
    cutoff           bigint      NOT NULL,
    expanded_after   text,
    routed_after     text,
    expanded         boolean     NOT NULL DEFAULT false,
    done             boolean     NOT NULL DEFAULT false,
    recipients       integer     NOT NULL DEFAULT 0,
    collapse_key     text,       -- the notification's collapse key, given to each delivery of the expansion
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX topic_sends_open ON topic_sends (topic, cutoff) WHERE NOT done;
CREATE INDEX topic_sends_stale ON topic_sends (updated_at) WHERE NOT done;
CREATE INDEX topic_sends_finished ON topic_sends (updated_at) WHERE done;
