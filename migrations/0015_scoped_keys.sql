-- Keys scoped to accounts (docs/security.md, Keys scoped to accounts): the
-- patterns of the accounts a key may move money from and read. NULL: every
-- account.
ALTER TABLE api_keys ADD COLUMN accounts text[] CHECK (accounts IS NULL OR cardinality(accounts) > 0);
