-- A worker's batch sends its statements and its COMMIT in one round trip
-- (internal/pgtx), so a row count the worker checked on its side would be
-- read after the transaction committed. Where a statement must change a
-- given number of rows (the accounts and transfers a batch locked and
-- now updates), the server checks it: txpipe_expect_rows raises, the
-- transaction is aborted, and the COMMIT that follows in the same round
-- trip rolls it back. A row the batch locked cannot be deleted or renamed
-- before it commits, so only a bug can raise it, and the error has a code
-- of its own, TXP01: the worker splits the batch and sends the record at
-- fault to the DLQ as internal_error, never the sender's fault
-- (consumers/classify.go).
CREATE FUNCTION txpipe_expect_rows(rows_found bigint, rows_wanted bigint, what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF rows_found IS DISTINCT FROM rows_wanted THEN
        RAISE EXCEPTION '%: % of % rows found', what, rows_found, rows_wanted USING ERRCODE = 'TXP01';
    END IF;
END
$$;
