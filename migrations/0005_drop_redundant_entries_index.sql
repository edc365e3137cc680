-- The primary key (account_id, account_version) already serves statements
-- newest first (a B-tree scans backwards); the extra index only cost an
-- insert per posting.
DROP INDEX IF EXISTS entries_account_version_desc;
