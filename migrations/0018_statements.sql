-- Daily statements (docs/events.md, Statements): each account keeps its
-- open statement period, the postings since its last statement, all of one
-- UTC day, and what they add up to. A worker closes the period at the
-- account's first posting of a later day, or its closer does once the day
-- is over (the partial index finds those accounts), under the account's row
-- lock, with one statement.closed event through the outbox.
--
-- Sums are numeric: a day's debits of one account may exceed a bigint.
-- period_entries counts the postings summed, so that a period that missed
-- some (a worker of the previous version posted during a rolling upgrade)
-- is seen and recounted from entries.
-- Accounts start with no open period: the first statement after this
-- migration covers the postings made since (its first_version says where
-- it starts). Adding columns with constant defaults rewrites nothing.
ALTER TABLE accounts
    ADD COLUMN period_day date,
    ADD COLUMN period_opening bigint NOT NULL DEFAULT 0,
    ADD COLUMN period_first_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN period_debits numeric NOT NULL DEFAULT 0,
    ADD COLUMN period_credits numeric NOT NULL DEFAULT 0,
    ADD COLUMN period_entries bigint NOT NULL DEFAULT 0,
    ADD COLUMN closed_through date;

-- The closer walks the periods of past days in this order, LIMIT by LIMIT:
-- the index's order makes each pass stop after its rows.
CREATE INDEX accounts_period_day ON accounts (period_day, account_id) WHERE period_day IS NOT NULL;
