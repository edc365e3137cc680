-- Several relays share the outbox without breaking per-key order: rows are
-- split into 32 shards by their key (all of a key's rows in one shard), and
-- each shard is published by one relay at a time, the holder of its lease.
-- PostgreSQL computes the shard, so every writer agrees and rows written
-- before this migration get theirs too. outbox.Shards must equal 32.
ALTER TABLE outbox ADD COLUMN shard smallint NOT NULL
    GENERATED ALWAYS AS (mod(mod(hashtextextended(encode(coalesce(key, ''::bytea), 'hex'), 0), 32) + 32, 32)::smallint) STORED;
CREATE INDEX outbox_shard_id ON outbox (shard, id);

-- One lease per shard. epoch grows by one at every change of holder: a
-- relay marks rows published only while its lease still has the epoch it
-- acquired (the fence), so one that lost its lease while paused or cut off
-- cannot act as the owner. Times are PostgreSQL's clock, the only one all
-- relays share.
CREATE TABLE relay_leases (
    shard      smallint    PRIMARY KEY CHECK (shard >= 0 AND shard < 32),
    owner      text,
    epoch      bigint      NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO relay_leases (shard) SELECT generate_series(0, 31);

-- The relays alive: each heartbeats here, and the shards are dealt among
-- those whose heartbeat is within the lease TTL. failing: its publishes to
-- Kafka have failed for a whole TTL (it steps down only if another relay's
-- have not).
CREATE TABLE relay_members (
    relay_id     text        PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL,
    failing      boolean     NOT NULL DEFAULT false,
    started_at   timestamptz NOT NULL DEFAULT now()
);
