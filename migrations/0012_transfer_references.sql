-- A money command's reference (the sender's order or invoice number) and
-- metadata stay with the transfer it made (docs/ledger.md, References and
-- metadata). A reference is unique among applied money commands: every
-- transfer is one, and a rejected command makes none.
ALTER TABLE transfers
    ADD COLUMN reference       text CHECK (length(reference) BETWEEN 1 AND 128),
    -- Sealed as an account's metadata is (migration 0007), under the
    -- transfer's id: the plaintext is never stored.
    ADD COLUMN metadata_key_id text,
    ADD COLUMN metadata_sealed bytea,
    ADD CONSTRAINT transfers_metadata_whole CHECK ((metadata_key_id IS NULL) = (metadata_sealed IS NULL));

-- Refuses a reference a concurrent batch applied first (its retry then
-- rejects with reference_exists), and finds a transfer by reference.
CREATE UNIQUE INDEX transfers_reference ON transfers (reference) WHERE reference IS NOT NULL;
-- What a key rotation must re-seal.
CREATE INDEX transfers_metadata_key_id ON transfers (metadata_key_id) WHERE metadata_key_id IS NOT NULL;
