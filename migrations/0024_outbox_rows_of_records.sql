-- An outbox row holds one or more records: the records one transaction
-- writes for one shard, in order, up to about 7 000 bytes a row
-- (outbox.Queue). A row used to be one record; at ~4.7 records a transfer
-- every record paid a heap tuple, two index entries, a row lock and a
-- delete, which cost the worker's and the relay's backends more than the
-- records' bytes did (docs/benchmarks.md, "Records by the row").
--
-- A row is one of two layouts:
--   - a record (rows written before this migration, and hand-written
--     ones): topic, key, value, headers, accepted_at, as before; records
--     and record_count NULL;
--   - records: record_count records packed by the worker into the bytea
--     records (outbox/rowformat.go; outbox_unpack below reads it), in
--     order; topic and value NULL. key is the first record's key, so the
--     generated shard is the one every record of the row hashes to: Queue
--     groups records by the same hash (outbox/shard.go, held to
--     outbox_shard by a test). Packing in the worker spares its backend
--     the parsing of each record's headers into jsonb and the grouping,
--     and the relay's backend the decoding: each row is one value.
-- The relay publishes a row's records in order and deletes the row once
-- each is published or parked; when some stay (Kafka did not take them,
-- or the relay's batch was full), it rewrites the row to those that stay.
-- The view outbox_records lists every record waiting, for operators and
-- tests.
--
-- The ALTERs take the outbox's ACCESS EXCLUSIVE lock (briefly: the new
-- columns are NULL, the check reads the few rows waiting); behind a long
-- reader they give up after 10 s instead of queueing the workers: run
-- migrate again. A relay of the previous version, still running, cannot
-- read a row of records, and stops publishing until it is replaced (it
-- retries; nothing is lost): roll the relays before the workers
-- (docs/deployment.md, "Upgrades").
SET LOCAL lock_timeout = '10s';

-- The shard of a key, as the outbox's generated column computes it (0008,
-- 0011).
CREATE FUNCTION outbox_shard(key bytea) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN mod(mod(hashtextextended(encode(coalesce(key, ''::bytea), 'hex'), 0), 32) + 32, 32)::smallint;

ALTER TABLE outbox
    ALTER COLUMN topic DROP NOT NULL,
    ALTER COLUMN value DROP NOT NULL,
    ADD COLUMN records      bytea,
    ADD COLUMN record_count integer,
    ADD CONSTRAINT outbox_layout CHECK (
        CASE WHEN records IS NULL
        THEN topic IS NOT NULL AND value IS NOT NULL AND record_count IS NULL
        ELSE topic IS NULL AND value IS NULL AND coalesce(record_count > 0, false)
        END);

-- A row of records is under 8 000 bytes: kept in the row's page as it is,
-- rather than compressed (and moved to the slot's TOAST table) past the
-- default 2 KiB, which would cost the worker's backend the compression and
-- the relay's the decompression. A row holding a single record larger
-- than that is moved out of line, uncompressed.
ALTER TABLE outbox ALTER COLUMN records SET STORAGE EXTERNAL;
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
ALTER TABLE outbox_parked ALTER COLUMN headers TYPE text USING headers::text,
    -- Where a parked record was: its outbox row and its position there, so
    -- that records unparked together go out in the order they were queued
    -- (outbox.Unpark), whenever each was parked.
    ADD COLUMN row_id bigint,
    ADD COLUMN ord    integer;

-- outbox_unpack reads a row's records (outbox/rowformat.go): a format
-- byte (1), then each record as its topic, key, value and headers, each a
-- 4-byte big-endian length (0xFFFFFFFF: a NULL key) and its bytes, and its
-- acceptance time in microseconds since 1970, 8 bytes big-endian (the
-- smallest int8: none).
CREATE FUNCTION outbox_unpack(records bytea)
    RETURNS TABLE (ord integer, topic text, key bytea, value bytea, headers text, accepted_at timestamptz)
    LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    p integer := 1;
    n int8;
    us int8;
BEGIN
    ord := 0;
    BEGIN
        IF length(records) = 0 OR get_byte(records, 0) <> 1 THEN
            RAISE EXCEPTION 'unknown format';
        END IF;
        WHILE p < length(records) LOOP
            ord := ord + 1;
            n := outbox_u32(records, p);
            topic := convert_from(substring(records FROM p + 5 FOR n::integer), 'UTF8');
            p := p + 4 + n::integer;
            n := outbox_u32(records, p);
            IF n = 4294967295 THEN
                key := NULL;
                p := p + 4;
            ELSE
                key := substring(records FROM p + 5 FOR n::integer);
                p := p + 4 + n::integer;
            END IF;
            n := outbox_u32(records, p);
            value := substring(records FROM p + 5 FOR n::integer);
            p := p + 4 + n::integer;
            n := outbox_u32(records, p);
            headers := convert_from(substring(records FROM p + 5 FOR n::integer), 'UTF8');
            p := p + 4 + n::integer;
            n := outbox_u32(records, p);
            IF n >= 2147483648 THEN
                n := n - 4294967296;
            END IF;
            us := n * 4294967296 + outbox_u32(records, p + 4);
            accepted_at := CASE WHEN us = -9223372036854775808 THEN NULL
                ELSE 'epoch'::timestamptz + us * interval '1 microsecond' END;
            p := p + 8;
            RETURN NEXT;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        -- A row that cannot be read (written by hand, or damaged) is one
        -- line: no position, its bytes as the value, the reason as the
        -- headers; the relay parks it whole.
        ord := NULL;
        topic := NULL;
        key := NULL;
        value := records;
        headers := 'unreadable: ' || SQLERRM;
        accepted_at := NULL;
        RETURN NEXT;
    END;
END
$$;

CREATE FUNCTION outbox_u32(b bytea, p integer) RETURNS int8
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (get_byte(b, p)::int8 << 24) | (get_byte(b, p + 1)::int8 << 16) | (get_byte(b, p + 2)::int8 << 8) | get_byte(b, p + 3)::int8;

-- Every record waiting; ORDER BY id, ord is the order the relay publishes
-- them in (ord: the position in the row, from 1).
CREATE VIEW outbox_records AS
SELECT o.id, r.ord, o.slot, o.shard, r.topic, r.key, r.value, r.headers, r.accepted_at, o.created_at
FROM outbox AS o
CROSS JOIN LATERAL outbox_unpack(o.records) AS r
UNION ALL
SELECT o.id, 1, o.slot, o.shard, o.topic, o.key, o.value, o.headers::text, o.accepted_at, o.created_at
FROM outbox AS o WHERE o.records IS NULL;
