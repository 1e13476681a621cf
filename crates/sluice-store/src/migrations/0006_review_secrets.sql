-- Whether a secret is given to review runs (changes not on the mainline) too.
ALTER TABLE secrets ADD COLUMN review BIGINT NOT NULL DEFAULT 0;

-- A row the server writes at each start, to find a read-only database then
-- rather than at its first change.
CREATE TABLE write_probe (id BIGINT PRIMARY KEY, at BIGINT NOT NULL)
