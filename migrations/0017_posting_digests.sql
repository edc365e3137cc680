-- Each account's postings form a hash chain (docs/events.md, Digests):
-- every entry keeps its posting's digest, every account the digest of its
-- latest posting, the link its next posting chains to.
--
-- The tables are locked in the workers' order (accounts, then entries), so
-- that a worker's batch in flight finishes first instead of deadlocking
-- with this migration; the workers then wait until it commits (docs/
-- deployment.md: minutes per million entries, measured there).
LOCK TABLE accounts, entries IN ACCESS EXCLUSIVE MODE;

ALTER TABLE entries ADD COLUMN digest bytea;
ALTER TABLE accounts ADD COLUMN digest bytea;

-- The digest of a posting chained to prev (hex, '' for none).
CREATE FUNCTION posting_digest(prev text, account_id text, account_version bigint, currency text,
    amount bigint, balance_after bigint, command_id uuid) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT sha256(convert_to(concat_ws('|', prev, account_id, account_version, currency, amount, balance_after, command_id), 'UTF8'))
$$;

-- Entries written before this migration, chained in account_version order.
DO $$
DECLARE
    r    record;
    acct text;
    prev text := '';
BEGIN
    FOR r IN SELECT account_id, account_version, currency, amount, balance_after, command_id
             FROM entries ORDER BY account_id, account_version LOOP
        IF acct IS DISTINCT FROM r.account_id THEN
            acct := r.account_id;
            prev := '';
        END IF;
        prev := encode(posting_digest(prev, r.account_id, r.account_version, r.currency, r.amount, r.balance_after, r.command_id), 'hex');
        UPDATE entries SET digest = decode(prev, 'hex')
            WHERE account_id = r.account_id AND account_version = r.account_version;
    END LOOP;
    UPDATE accounts a SET digest = e.digest
        FROM entries e WHERE e.account_id = a.account_id AND e.account_version = a.version;
END $$;

-- A worker of the previous version, still running during a rolling
-- upgrade, writes entries without a digest: chain them here, from the
-- account's previous entry, and move the account's link on. Rows earlier
-- in the same INSERT are visible to this row's trigger, so a batch that
-- posts to an account twice chains both. The WHEN clause keeps the
-- current workers, which write the digest, from calling it at all.
CREATE FUNCTION entries_chain_missing_digest() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    prev bytea;
BEGIN
    SELECT digest INTO prev FROM entries
        WHERE account_id = NEW.account_id AND account_version = NEW.account_version - 1;
    NEW.digest := posting_digest(coalesce(encode(prev, 'hex'), ''), NEW.account_id, NEW.account_version, NEW.currency,
        NEW.amount, NEW.balance_after, NEW.command_id);
    UPDATE accounts SET digest = NEW.digest WHERE account_id = NEW.account_id;
    RETURN NEW;
END $$;
CREATE TRIGGER entries_chain_missing_digest BEFORE INSERT ON entries
    FOR EACH ROW WHEN (NEW.digest IS NULL) EXECUTE FUNCTION entries_chain_missing_digest();

ALTER TABLE entries ALTER COLUMN digest SET NOT NULL;
ALTER TABLE entries ADD CONSTRAINT entries_digest_length CHECK (length(digest) = 32);
