-- API keys of producers and operators (SPEC §7). Only a key's SHA-256 is kept: the key itself is shown
-- once, by `notiflow keys create`, and cannot be recovered from this table.
CREATE TABLE api_keys (
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL,
    key_hash    text        NOT NULL UNIQUE,
    -- The key's first characters, so that an operator can tell keys apart in `notiflow keys list`.
    prefix      text        NOT NULL,
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT api_keys_scopes_ok CHECK
        (cardinality(scopes) > 0 AND scopes <@ ARRAY['send', 'read', 'admin']::text[])
);
-- One live key per name; revoked keys stay listed (who had access, and until when).
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;

-- Idempotency keys belong to the API key that used them: two producers may pick the same key, and
-- neither can read the other's response by guessing it. '' is the scope of requests made with auth off.
ALTER TABLE idempotency_keys ADD COLUMN scope text NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey, ADD PRIMARY KEY (scope, key);
