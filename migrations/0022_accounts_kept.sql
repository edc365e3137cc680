-- Entries and transfers name accounts without foreign keys, and accounts
-- are never deleted or renamed.
--
-- The three foreign keys (entries.account_id, transfers.from_account_id and
-- to_account_id) each ran a lookup and a row lock on accounts for every
-- row inserted: a sixth of the worker's PostgreSQL CPU, and 1.12× the
-- throughput when they are gone (docs/benchmarks.md). They proved nothing
-- the batch did not already know: in production the only writer of these
-- rows is a worker's batch, which locks every account it names (FOR
-- UPDATE, in Load) or creates it in the same transaction, and refuses,
-- before sending anything, a row naming an account that is not among them
-- (ledger.ErrNotLocked). transfer_legs never had them. (loadgen's preload
-- and bulk fixtures write such rows directly, for accounts they made.)
-- txpipe verify checks that every row names an account.
--
-- What the foreign keys also did, refuse to delete or rename an account
-- that rows name, these statement-level triggers do for every account: a
-- ledger account is closed (close_account), never removed, because its
-- entries, transfers and published records name it for good. They fire
-- once per statement, and never on the workers' updates, which do not set
-- account_id.
--
-- Dropping a foreign key locks both its tables (ACCESS EXCLUSIVE, briefly);
-- behind a long reader (pg_dump, a report) it would queue every worker and
-- API read on them, so it gives up after 10 s instead: run migrate again.
-- Every foreign key to accounts goes, whatever a restore named it.
SET LOCAL lock_timeout = '10s';
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
              WHERE contype = 'f' AND confrelid = 'accounts'::regclass LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.conname);
    END LOOP;
END
$$;

CREATE FUNCTION txpipe_accounts_are_kept() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'accounts are never deleted or renamed (% refused): entries, transfers and published records name them; close_account closes one', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER accounts_not_deleted BEFORE DELETE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION txpipe_accounts_are_kept();
CREATE TRIGGER accounts_not_truncated BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION txpipe_accounts_are_kept();
CREATE TRIGGER accounts_not_renamed BEFORE UPDATE OF account_id ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION txpipe_accounts_are_kept();
