-- A stored offset counts records of one particular log. If the commands
-- topic is recreated or truncated, the same number means something else, and
-- resuming there would skip every record of the new log below it. These
-- columns let workers notice that, even across restarts, and stop.
--
-- anchor_offset, anchor_hash: a record a worker applied (below next_offset)
-- and the SHA-256 of its key, value and timestamp. When the log holds another
-- record at that offset, it is not the log the stored offset counts in.
--
-- halted_at, halt_reason, halt_log_start, halt_log_end: set by the worker
-- that found the stored offset past the log's end or the anchor changed,
-- with the log bounds it saw. No worker fetches or applies a halted
-- partition; only an operator's `txpipe offsets reset` clears the halt.
ALTER TABLE consumer_offsets
    ADD COLUMN anchor_offset  bigint,
    ADD COLUMN anchor_hash    bytea,
    ADD COLUMN halted_at      timestamptz,
    ADD COLUMN halt_reason    text,
    ADD COLUMN halt_log_start bigint,
    ADD COLUMN halt_log_end   bigint,
    ADD CONSTRAINT consumer_offsets_anchor_whole CHECK ((anchor_offset IS NULL) = (anchor_hash IS NULL)),
    ADD CONSTRAINT consumer_offsets_halt_whole CHECK ((halted_at IS NULL) = (halt_reason IS NULL));

-- Every operator decision on a stored offset (txpipe offsets reset): who,
-- when, which partition, from where to where, why, and the log bounds they
-- saw. Rows are only ever inserted.
CREATE TABLE consumer_offset_resets (
    id           bigserial   PRIMARY KEY,
    group_id     text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    from_offset  bigint,                -- NULL: no offset was stored
    to_offset    bigint      NOT NULL,
    target       text        NOT NULL,  -- as asked: earliest, latest or the offset
    log_start    bigint      NOT NULL,
    log_end      bigint      NOT NULL,
    halt_cleared text,                  -- the halt's reason, when the partition was halted
    reason       text        NOT NULL CHECK (reason <> ''),
    reset_by     text        NOT NULL CHECK (reset_by <> ''),
    reset_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (to_offset BETWEEN log_start AND log_end)
);
CREATE INDEX consumer_offset_resets_recent ON consumer_offset_resets (topic, reset_at DESC);
