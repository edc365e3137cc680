-- A worker's batch sends its statements and its COMMIT in one round trip
-- (internal/pgtx), so a row count the worker checked on its side would be
-- read after the transaction committed. Where a statement must change a
-- given number of rows (the accounts and transfers a batch locked and
-- now updates), the server checks it: txpipe_expect_rows raises, the
-- transaction is aborted, and the COMMIT that follows in the same round
-- trip rolls it back. raise_exception (P0001) makes the worker split the
-- batch and send the record at fault to the DLQ, as for a value the
-- database refuses (consumers/classify.go).
CREATE FUNCTION txpipe_expect_rows(rows_found bigint, rows_wanted bigint, what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF rows_found <> rows_wanted THEN
        RAISE EXCEPTION '%: % of % rows found', what, rows_found, rows_wanted;
    END IF;
END
$$;
