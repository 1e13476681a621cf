-- Whether a secret is given to review runs (changes not on the mainline) too.
ALTER TABLE secrets ADD COLUMN review BIGINT NOT NULL DEFAULT 0
