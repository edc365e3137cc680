-- The outbox becomes a ring of 8 partitions ("slots") by when a row was
-- written, so that what the relay has published is thrown away by
-- TRUNCATE instead of waiting for VACUUM (docs/outbox.md).
--
-- A row's slot is the 3-second window of its transaction's start (now(),
-- PostgreSQL's clock), modulo 8: writers never name it, the column default
-- computes it. The relay reads every row still there, whatever its slot, in
-- id order, and deletes what Kafka took, as before; a slot that is not
-- the current window's, the previous one's or the next one's, and that
-- holds no row once the relay has its ACCESS EXCLUSIVE lock, is truncated
-- (outbox/reclaim.go). outbox.Slots must equal 8 and outbox.SlotWindow
-- 3 s.
CREATE FUNCTION outbox_slot(at timestamptz) RETURNS smallint
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN mod(floor(extract(epoch FROM at) / 3)::bigint, 8)::smallint;

ALTER TABLE outbox RENAME TO outbox_unsliced;
ALTER TABLE outbox_unsliced RENAME CONSTRAINT outbox_pkey TO outbox_unsliced_pkey;
ALTER INDEX outbox_shard_id RENAME TO outbox_unsliced_shard_id;
ALTER SEQUENCE outbox_id_seq OWNED BY NONE;

CREATE TABLE outbox (
    id          bigint      NOT NULL DEFAULT nextval('outbox_id_seq'),
    slot        smallint    NOT NULL DEFAULT outbox_slot(now()),
    topic       text        NOT NULL,
    key         bytea,
    value       bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}',
    accepted_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- As in 0008: all of a key's rows are in one of 32 shards.
    shard       smallint    NOT NULL
        GENERATED ALWAYS AS (mod(mod(hashtextextended(encode(coalesce(key, ''::bytea), 'hex'), 0), 32) + 32, 32)::smallint) STORED,
    -- Led by id, so each slot's index gives the relay its rows in id order.
    PRIMARY KEY (id, slot)
) PARTITION BY LIST (slot);
CREATE INDEX outbox_shard_id ON outbox (shard, id);
ALTER SEQUENCE outbox_id_seq OWNED BY outbox.id;

-- Autovacuum stays on as a safety net only: a slot is normally truncated
-- within a few windows of its last write, long before autovacuum's
-- thresholds matter.
CREATE TABLE outbox_slot_0 PARTITION OF outbox FOR VALUES IN (0);
CREATE TABLE outbox_slot_1 PARTITION OF outbox FOR VALUES IN (1);
CREATE TABLE outbox_slot_2 PARTITION OF outbox FOR VALUES IN (2);
CREATE TABLE outbox_slot_3 PARTITION OF outbox FOR VALUES IN (3);
CREATE TABLE outbox_slot_4 PARTITION OF outbox FOR VALUES IN (4);
CREATE TABLE outbox_slot_5 PARTITION OF outbox FOR VALUES IN (5);
CREATE TABLE outbox_slot_6 PARTITION OF outbox FOR VALUES IN (6);
CREATE TABLE outbox_slot_7 PARTITION OF outbox FOR VALUES IN (7);

-- Rows not yet published keep their ids (and so their order); they land in
-- the current slot.
INSERT INTO outbox (id, topic, key, value, headers, accepted_at, created_at)
SELECT id, topic, key, value, headers, accepted_at, created_at FROM outbox_unsliced ORDER BY id;
DROP TABLE outbox_unsliced;

-- Tables updated in place by every batch or heartbeat. Room left on each
-- page (fillfactor) lets an update stay on its page: a HOT update, which
-- adds no index entry and whose old version the next visit prunes. Their
-- autovacuum starts on a fixed count of dead tuples rather than on 20% of
-- the table, and for the three tables of a page or two, which are updated
-- hundreds of times a second, without cost delay. transfers gets nothing:
-- its updates change status, which the partial index
-- transfers_pending_expiry reads, so none can be HOT. A fillfactor applies
-- to pages filled from now on; docs/operations.md ("Table growth") has the
-- figures and what to do for existing tables.
ALTER TABLE accounts SET (fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
ALTER TABLE consumer_offsets SET (fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE relay_leases SET (fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE relay_members SET (fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500, autovacuum_vacuum_cost_delay = 0);
