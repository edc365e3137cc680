-- Every movement or reservation of money: transfers, deposits, withdrawals
-- and holds, with their state. The id is the command_id that made it.
CREATE TABLE transfers (
    transfer_id     uuid        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('transfer', 'deposit', 'withdrawal', 'hold')),
    from_account_id text        NOT NULL REFERENCES accounts (account_id),
    to_account_id   text        NOT NULL REFERENCES accounts (account_id),
    currency        text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    captured_amount bigint      NOT NULL DEFAULT 0 CHECK (captured_amount >= 0 AND captured_amount <= amount),
    reversed_amount bigint      NOT NULL DEFAULT 0 CHECK (reversed_amount >= 0 AND reversed_amount <= amount),
    status          text        NOT NULL CHECK (status IN ('posted', 'reversed', 'pending', 'captured', 'released', 'expired')),
    expires_at      timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
-- The expirer's work list: pending holds by expiry.
CREATE INDEX transfers_pending_expiry ON transfers (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;
-- Statements page through an account's entries newest first.
CREATE INDEX entries_account_version_desc ON entries (account_id, account_version DESC);
