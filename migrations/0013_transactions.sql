-- A transaction moves money in several legs, all or nothing (docs/ledger.md,
-- Transactions). Its transfers row describes its first leg; every leg is a
-- row here, with what reversals gave back of it.
ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check
    CHECK (kind IN ('transfer', 'deposit', 'withdrawal', 'hold', 'transaction'));

CREATE TABLE transfer_legs (
    transfer_id     uuid     NOT NULL REFERENCES transfers,
    leg             smallint NOT NULL CHECK (leg >= 0 AND leg < 64),
    from_account_id text     NOT NULL,
    to_account_id   text     NOT NULL,
    currency        text     NOT NULL,
    amount          bigint   NOT NULL CHECK (amount > 0),
    reversed_amount bigint   NOT NULL DEFAULT 0 CHECK (reversed_amount >= 0 AND reversed_amount <= amount),
    PRIMARY KEY (transfer_id, leg)
);
