-- Commands whose record went to the DLQ, by the command_id read from the
-- record (domain.Identify): what GET /v1/commands/{id} answers as
-- "dead_lettered" until a decision for that id exists in processed_commands,
-- which always wins (a replay that decides the command replaces the status).
-- It is not a dedupe table: the workers never read it to decide.
CREATE TABLE dead_lettered_commands (
    command_id       uuid PRIMARY KEY,
    type             text,
    debit_account_id text,
    reason           text NOT NULL,
    detail           text NOT NULL,
    source_partition int NOT NULL,
    source_offset    bigint NOT NULL,
    submitted_by     text,
    dead_lettered_at timestamptz NOT NULL
);
