-- Instances on agents' hosts (an environment's `hosts:`). An agent says
-- where its host's instances can be reached; an instance names the agent
-- whose host runs it (NULL: the server's own host).
ALTER TABLE agents ADD COLUMN address TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN agent TEXT;
-- What each agent is to run: the instance, how to start it (JSON, without
-- the paths, which are the agent's own), whether the server asked it to
-- stop, and what the agent last reported of it (its process, how often it
-- exited, whether it runs now).
CREATE TABLE placements (
    instance_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    spec TEXT NOT NULL,
    stop_asked BIGINT NOT NULL DEFAULT 0,
    pid BIGINT,
    exits BIGINT NOT NULL DEFAULT 0,
    running BIGINT NOT NULL DEFAULT 0,
    reported_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX placements_agent ON placements (agent);
