-- Reads, second round (docs/api.md, Queries): one index per question the
-- API answers, each shown with its plan at a million transfers there.

-- Transfers of an account, newest first, whichever side it is on.
CREATE INDEX transfers_from_created ON transfers (from_account_id, created_at DESC, transfer_id DESC);
CREATE INDEX transfers_to_created ON transfers (to_account_id, created_at DESC, transfer_id DESC);
-- Transfers when no account is named: by time.
CREATE INDEX transfers_created ON transfers (created_at DESC, transfer_id DESC);
-- The legs of transactions after the first (which the transfers row
-- names) by account, newest first: each leg carries its transaction's
-- creation time (rewrites transfer_legs once, on upgrade).
ALTER TABLE transfer_legs ADD COLUMN created_at timestamptz;
UPDATE transfer_legs l SET created_at = t.created_at FROM transfers t WHERE t.transfer_id = l.transfer_id;
ALTER TABLE transfer_legs ALTER COLUMN created_at SET NOT NULL;
CREATE INDEX transfer_legs_from ON transfer_legs (from_account_id, created_at DESC, transfer_id DESC) WHERE leg > 0;
CREATE INDEX transfer_legs_to ON transfer_legs (to_account_id, created_at DESC, transfer_id DESC) WHERE leg > 0;
-- Rejected commands, by debit account and by time: partial, so applied
-- commands (most of them) cost these indexes nothing.
CREATE INDEX processed_commands_rejected_account ON processed_commands (debit_account_id, processed_at DESC, command_id DESC)
    WHERE status = 'rejected';
CREATE INDEX processed_commands_rejected ON processed_commands (processed_at DESC, command_id DESC)
    WHERE status = 'rejected';
-- Pending holds of an account by expiry; an account's holds by time (what
-- it held at a past time).
CREATE INDEX transfers_pending_holds ON transfers (from_account_id, expires_at) WHERE status = 'pending';
CREATE INDEX transfers_holds ON transfers (from_account_id, created_at) WHERE kind = 'hold';
-- Accounts by prefix in byte order, whatever the database's collation
-- (LIKE 'p%' uses a btree only under the "C" collation).
CREATE INDEX accounts_id_c ON accounts ((account_id COLLATE "C"));
-- When a hold stopped counting against its account's available funds
-- (captured, released or expired): what an account's available balance
-- as of a past time is computed from. Holds settled before this migration
-- get their last change, the best there is.
ALTER TABLE transfers ADD COLUMN settled_at timestamptz;
UPDATE transfers SET settled_at = updated_at WHERE kind = 'hold' AND status <> 'pending';
