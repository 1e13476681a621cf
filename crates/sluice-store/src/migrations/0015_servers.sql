-- The servers sharing the database and where each is reached, as each
-- last said (every few seconds while it runs; a clean stop removes its
-- row). Agents hear of them, to turn to another server when theirs is gone.
CREATE TABLE servers (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    seen_at BIGINT NOT NULL
)
