-- Outbox rows the relay can never publish (e.g. larger than Kafka accepts),
-- moved aside so they cannot block every row behind them. An operator
-- inspects them; txpipe_relay_parked_total counts them.
CREATE TABLE outbox_parked (
    id          bigint      PRIMARY KEY,
    topic       text        NOT NULL,
    key         bytea,
    value       bytea       NOT NULL,
    headers     jsonb       NOT NULL,
    accepted_at timestamptz,
    created_at  timestamptz NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    reason      text        NOT NULL
);
