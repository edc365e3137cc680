-- Autovacuum leaves the outbox's slots to the relay. A slot is emptied by
-- the relay's TRUNCATE a few windows after its last write (0011,
-- outbox/reclaim.go), so what VACUUM would clean there is gone before it
-- matters; yet with the default thresholds autovacuum came back to the
-- recently written slots at every naptime (each holds thousands of rows
-- inserted and deleted a window), and each pass got in the way:
--   - its lock on the slot made the relay's truncation wait out its
--     lock_timeout (100 ms), during which the relay published nothing;
--   - at its end it tried, for up to 5 s, to take the slot's ACCESS
--     EXCLUSIVE lock to cut off the empty pages, which the relays' reads
--     (they lock every slot) then queue behind while it has it;
--   - and it spent CPU every minute on a machine with none to spare
--     (docs/benchmarks.md, "Autovacuum and the outbox's slots, and the
--     soaks of the night").
-- So, on every slot: no vacuum for inserts (the rows are deleted within
-- seconds), no analyze (the relay plans its statements with sequential
-- scans and sorts off, so their plans walk the primary keys whatever the
-- estimates; the other readers scan the slots whole), and no truncation
-- by VACUUM (the relay's TRUNCATE gives the space back). Vacuum for dead tuples stays, as a
-- safety net for a relay that cannot truncate (its role lacks TRUNCATE, a
-- long transaction holds a slot), once a slot holds 200 000 dead tuples: a
-- slot truncated on time holds one 3-s window's rows, and at five rows a
-- transfer 200 000 is a window of ~13 000 transfers a second, about three
-- times what the pipeline sustains on the benchmark machine. A deployment
-- that writes more than that in a window raises it per slot (two to three
-- times a window's rows at peak: docs/operations.md, "The outbox's slots").
-- Anti-wraparound vacuum is not affected, and a truncated slot starts a
-- new relfrozenxid anyway.
DO $$
BEGIN
    FOR s IN 0..7 LOOP
        EXECUTE format('ALTER TABLE outbox_slot_%s SET (
            autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200000,
            autovacuum_vacuum_insert_threshold = -1,
            autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2147483647,
            vacuum_truncate = false)', s);
    END LOOP;
END
$$;
