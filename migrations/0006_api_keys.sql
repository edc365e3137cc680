-- API keys: only a SHA-256 of each secret is kept (internal/apikey).
CREATE TABLE api_keys (
    key_id       text        PRIMARY KEY,
    name         text        NOT NULL,
    scopes       text[]      NOT NULL,
    secret_hash  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
-- Who submitted each command: the key id ingest authenticated (empty for
-- records produced straight to Kafka). The audit trail of who moved what.
ALTER TABLE processed_commands ADD COLUMN submitted_by text NOT NULL DEFAULT '';
ALTER TABLE entries ADD COLUMN submitted_by text NOT NULL DEFAULT '';
