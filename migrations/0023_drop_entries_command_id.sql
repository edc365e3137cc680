-- entries_command_id (0001) serves no statement of txpipe: the API reads
-- an account's entries by the primary key (account_id, account_version),
-- the auditor reads them whole, and a command's postings are on the
-- postings topic. Yet every entry paid an insert into it (a uuid index
-- as long as the table's history; random where senders' ids are, rather
-- than time-ordered as loadgen's UUIDv7): dropping it measured 1.06× the
-- txpipe scenario's throughput, and gives back 45 MB per million
-- commands (docs/benchmarks.md). A command's postings are on the
-- postings topic (each record names its command_id); in the database,
-- `SELECT * FROM entries WHERE command_id = '…'` now reads the table
-- whole (seconds per million entries): narrow it by account_id where the
-- accounts are known, which the primary key leads with.
--
-- DROP INDEX locks entries (ACCESS EXCLUSIVE, briefly): behind a long
-- reader it gives up after 10 s instead of queueing the workers; run
-- migrate again.
SET LOCAL lock_timeout = '10s';
DROP INDEX IF EXISTS entries_command_id;
