-- The tables that only grow with traffic are analyzed less often. By
-- default autovacuum analyzes a table once 10 % of it has changed: for
-- entries at a million commands that is every ~100 s at 1 000 commands/s,
-- and each analyze reads a sample of 30 000 rows spread over the whole
-- table, a burst of a few seconds of CPU and reads that, on a busy server,
-- shows in the latency tail (docs/benchmarks.md, "The 30-minute soak").
-- Their statistics change little as they grow: every query of them walks an
-- index, and for the newest rows, past a histogram's end, the planner reads
-- the index's actual end (get_actual_variable_range). At 50 % an analyze
-- comes about four times less often over the same growth. The row counts
-- that plans use are kept fresh by the insert-driven autovacuum as well.
ALTER TABLE entries SET (autovacuum_analyze_scale_factor = 0.5);
ALTER TABLE transfers SET (autovacuum_analyze_scale_factor = 0.5);
ALTER TABLE transfer_legs SET (autovacuum_analyze_scale_factor = 0.5);
ALTER TABLE processed_commands SET (autovacuum_analyze_scale_factor = 0.5);
