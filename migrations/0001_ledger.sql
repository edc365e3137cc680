-- Accounts, their entries, processed commands, the stored consumer offsets and
-- the outbox. Amounts are bigint minor units; never numeric floats.

CREATE TABLE accounts (
    account_id        text        PRIMARY KEY,
    currency          text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('active', 'frozen', 'closed')),
    external          boolean     NOT NULL DEFAULT false,
    balance           bigint      NOT NULL DEFAULT 0,
    held              bigint      NOT NULL DEFAULT 0 CHECK (held >= 0),
    overdraft_limit   bigint      NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    daily_debit_limit bigint      NOT NULL DEFAULT 0 CHECK (daily_debit_limit >= 0),
    daily_debit_day   date,
    daily_debited     bigint      NOT NULL DEFAULT 0,
    version           bigint      NOT NULL DEFAULT 0,
    metadata          jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Invariant 4: no client account goes below its overdraft limit.
    CONSTRAINT accounts_within_overdraft CHECK (external OR balance - held >= -overdraft_limit)
);

-- One row per posting: the statement of an account. (account_id,
-- account_version) is contiguous from 1 per account.
CREATE TABLE entries (
    account_id      text        NOT NULL REFERENCES accounts (account_id),
    account_version bigint      NOT NULL CHECK (account_version > 0),
    command_id      uuid        NOT NULL,
    command_type    text        NOT NULL,
    currency        text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount <> 0),
    balance_after   bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (account_id, account_version)
);
CREATE INDEX entries_command_id ON entries (command_id);

-- The decision taken for every command_id: the idempotency record. A retry of
-- the same content replays it; other content under the same id is a conflict.
CREATE TABLE processed_commands (
    command_id       uuid        PRIMARY KEY,
    type             text        NOT NULL,
    fingerprint      bytea       NOT NULL,
    status           text        NOT NULL CHECK (status IN ('applied', 'rejected')),
    reason           text,
    debit_account_id text        NOT NULL,
    accepted_at      timestamptz,
    processed_at     timestamptz NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL
);

-- The next offset to apply per consumed partition, advanced in the same
-- transaction as the effects of the records before it. It is the source of
-- truth for where a worker resumes, and the fence that stops a worker whose
-- view of the partition is stale from committing.
CREATE TABLE consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Records waiting for the relay. Rows are deleted once Kafka acknowledged
-- them, so the table stays small and the relay never needs a watermark.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    topic       text        NOT NULL,
    key         bytea,
    value       bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}',
    accepted_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
