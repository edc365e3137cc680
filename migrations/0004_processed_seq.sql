-- The order in which commands were decided. A batch takes its numbers while
-- holding the locks of every account it touches, so two commands that share
-- an account are numbered in the order they were applied: replaying commands
-- by seq through the rules reproduces every outcome (the model check does).
ALTER TABLE processed_commands ADD COLUMN seq bigserial;
CREATE UNIQUE INDEX processed_commands_seq ON processed_commands (seq);
