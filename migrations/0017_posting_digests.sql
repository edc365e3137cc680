-- Each account's postings form a hash chain (docs/events.md, Digests):
-- every entry keeps its posting's digest, every account the digest of its
-- latest posting, the link its next posting chains to. Entries written
-- before this migration are chained here, in account_version order (a
-- long run on a large ledger: one UPDATE per entry).
ALTER TABLE entries ADD COLUMN digest bytea;
ALTER TABLE accounts ADD COLUMN digest bytea;

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
        prev := encode(sha256(convert_to(concat_ws('|', prev, r.account_id, r.account_version, r.currency,
            r.amount, r.balance_after, r.command_id), 'UTF8')), 'hex');
        UPDATE entries SET digest = decode(prev, 'hex')
            WHERE account_id = r.account_id AND account_version = r.account_version;
    END LOOP;
    UPDATE accounts a SET digest = e.digest
        FROM entries e WHERE e.account_id = a.account_id AND e.account_version = a.version;
END $$;

ALTER TABLE entries ALTER COLUMN digest SET NOT NULL;
ALTER TABLE entries ADD CONSTRAINT entries_digest_length CHECK (length(digest) = 32);
