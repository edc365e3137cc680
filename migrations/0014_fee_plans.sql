-- Fee schedules (docs/ledger.md, Fees): an account's plan, and the fee each
-- transfer, withdrawal or transaction leg paid under it.
ALTER TABLE accounts ADD COLUMN fee_plan jsonb CHECK (fee_plan IS NULL OR jsonb_typeof(fee_plan) = 'object');
ALTER TABLE transfers ADD COLUMN fee bigint NOT NULL DEFAULT 0 CHECK (fee >= 0);
ALTER TABLE transfer_legs ADD COLUMN fee bigint NOT NULL DEFAULT 0 CHECK (fee >= 0);

-- The leg a rejected transaction failed at, for GET /v1/commands/{id}.
ALTER TABLE processed_commands ADD COLUMN leg smallint CHECK (leg >= 0 AND leg < 64);
