-- The tables that grow with every command are analyzed less often. By
-- default autovacuum analyzes a table once 10 % of it has changed: for
-- entries at a million commands that is every ~100 s at 1 000 commands/s,
-- and each analyze reads a sample of 30 000 rows spread over the whole
-- table, a burst of a few seconds of CPU and reads that, on a busy server,
-- shows in the latency tail (docs/benchmarks.md, "The 30-minute soak").
-- Their reads are index lookups by key (an account, an id, a command) or
-- keyset pages along an index, whose plans do not turn on fresh
-- statistics; the one estimate that ages is the share of a status in
-- transfers (holds move from pending), which the API's transfer search
-- filters on, and which drifts by at most a third of the table between two
-- analyzes instead of a tenth. At 50 % an analyze comes about four times
-- less often over the same growth; the row counts that plans use are kept
-- fresh by the insert-driven autovacuum as well.
ALTER TABLE entries SET (autovacuum_analyze_scale_factor = 0.5);
ALTER TABLE transfers SET (autovacuum_analyze_scale_factor = 0.5);
ALTER TABLE transfer_legs SET (autovacuum_analyze_scale_factor = 0.5);
ALTER TABLE processed_commands SET (autovacuum_analyze_scale_factor = 0.5);
