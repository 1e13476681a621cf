-- How many jobs an agent runs at once: 0 for one that runs environments
-- only (the server's local agent), which a job waiting for an agent does
-- not count as one.
ALTER TABLE agents ADD COLUMN jobs BIGINT NOT NULL DEFAULT 1
