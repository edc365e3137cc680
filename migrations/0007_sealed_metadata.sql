-- Account metadata may hold personal data: it is kept sealed (AES-256-GCM in
-- the application, internal/sealing) beside the id of the key that sealed
-- it, so a dump or backup never shows it. The plaintext jsonb column stays
-- only for rows written before this migration; `txpipe metadata-key rotate`
-- seals those and empties it.
ALTER TABLE accounts ADD COLUMN metadata_key_id text;
ALTER TABLE accounts ADD COLUMN metadata_sealed bytea;
ALTER TABLE accounts ADD CONSTRAINT accounts_metadata_sealed_with_key
    CHECK ((metadata_key_id IS NULL) = (metadata_sealed IS NULL));
-- Finds what a rotation still has to re-seal without reading every account.
CREATE INDEX accounts_metadata_key_id ON accounts (metadata_key_id) WHERE metadata_key_id IS NOT NULL;
