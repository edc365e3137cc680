-- An outbox row holds one or more records: the records one transaction
-- writes for one shard, in order, up to about 6 KiB a row (outbox.Queue).
-- A row used to be one record; at ~4.7 records a transfer every record paid
-- a heap tuple, two index entries, a row lock and a delete, which cost the
-- worker's and the relay's backends more than the records' bytes did
-- (docs/benchmarks.md, "Records by the row").
--
-- A row is one of two layouts:
--   - a record (rows written before this migration, and unparked records):
--     topic, key, value, headers, accepted_at, as before; the arrays NULL;
--   - records: topics, keys, vals, hdrs and accepted, one element a record,
--     in order; topic and value NULL. key is the first record's key, so the
--     generated shard is the one every record of the row hashes to (Queue
--     groups them by it). hdrs is each record's headers as JSON text:
--     parsing them into jsonb cost the worker's backend about 5 µs a record,
--     and only the relay reads them.
-- The relay publishes a row's records in order and deletes the row once
-- each is published or parked; when some stay (Kafka did not take them, or
-- the relay's batch was full), it rewrites the row to those that stay.
-- outbox_records lists every record of every row, for operators and tests.
--
-- The ALTERs take the outbox's ACCESS EXCLUSIVE lock (briefly: the new
-- columns are NULL, the check reads the few rows waiting); behind a long
-- reader they give up after 10 s instead of queueing the workers: run
-- migrate again. txpipe binaries older than this migration refuse to start
-- against it (schema check), so no older worker writes while newer relays
-- read, or the other way round.
SET LOCAL lock_timeout = '10s';

-- The shard of a key, as the outbox's generated column computes it (0008,
-- 0011): Queue groups a transaction's records by it, so that a row's
-- records are all of the row's shard.
CREATE FUNCTION outbox_shard(key bytea) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN mod(mod(hashtextextended(encode(coalesce(key, ''::bytea), 'hex'), 0), 32) + 32, 32)::smallint;

ALTER TABLE outbox
    ALTER COLUMN topic DROP NOT NULL,
    ALTER COLUMN value DROP NOT NULL,
    ADD COLUMN topics   text[],
    ADD COLUMN keys     bytea[],
    ADD COLUMN vals     bytea[],
    ADD COLUMN hdrs     text[],
    ADD COLUMN accepted timestamptz[],
    -- Each row is one layout or the other, and a row of records has one
    -- element a record in every array, one-dimensional and numbered from
    -- 1 (the relay names records by their position); only a key (and an
    -- acceptance time) may be NULL, as in the older layout.
    ADD CONSTRAINT outbox_layout CHECK (
        CASE WHEN topics IS NULL
        THEN topic IS NOT NULL AND value IS NOT NULL
            AND keys IS NULL AND vals IS NULL AND hdrs IS NULL AND accepted IS NULL
        ELSE topic IS NULL AND value IS NULL
            AND coalesce(array_ndims(topics) = 1 AND array_lower(topics, 1) = 1
                AND array_ndims(keys) = 1 AND array_lower(keys, 1) = 1 AND cardinality(keys) = cardinality(topics)
                AND array_ndims(vals) = 1 AND array_lower(vals, 1) = 1 AND cardinality(vals) = cardinality(topics)
                AND array_ndims(hdrs) = 1 AND array_lower(hdrs, 1) = 1 AND cardinality(hdrs) = cardinality(topics)
                AND array_ndims(accepted) = 1 AND array_lower(accepted, 1) = 1 AND cardinality(accepted) = cardinality(topics)
                AND array_position(topics, NULL) IS NULL AND array_position(vals, NULL) IS NULL
                AND array_position(hdrs, NULL) IS NULL,
                false)
        END);

-- A row of records is up to about 7 KiB: kept in the row's page as it is,
-- rather than compressed (and moved to the slot's TOAST table) past the
-- default 2 KiB, which would cost the worker's backend the compression and
-- the relay's the decompression. Larger rows (a single record over 6 KiB)
-- are still compressed and moved.
DO $$
BEGIN
    FOR s IN 0..7 LOOP
        EXECUTE format('ALTER TABLE outbox_slot_%s SET (toast_tuple_target = 8160)', s);
    END LOOP;
END
$$;

-- A parked record's headers are kept as text, as a row of records holds
-- them: a record parked because its headers are not JSON keeps them as
-- they were.
ALTER TABLE outbox_parked ALTER COLUMN headers TYPE text USING headers::text;

-- Every record waiting, in the order the relay publishes them: by row id,
-- then by position in the row (ord, from 1).
CREATE VIEW outbox_records AS
SELECT o.id, r.ord, o.slot, o.shard, r.topic, r.key, r.value, r.headers, r.accepted_at, o.created_at
FROM outbox AS o
CROSS JOIN LATERAL unnest(
    coalesce(o.topics, ARRAY[o.topic]), coalesce(o.keys, ARRAY[o.key]), coalesce(o.vals, ARRAY[o.value]),
    coalesce(o.hdrs, ARRAY[o.headers::text]), coalesce(o.accepted, ARRAY[o.accepted_at]))
    WITH ORDINALITY AS r (topic, key, value, headers, accepted_at, ord);
