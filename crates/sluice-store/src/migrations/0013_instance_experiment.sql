-- Which open experiment an instance is the B of (NULL: its environment's
-- own). A restart keeps an experiment's A and B by it: their releases
-- alone cannot tell them apart when the experiment tries a config change
-- on the same release.
ALTER TABLE instances ADD COLUMN experiment_id BIGINT;
-- Instances started before this column: an open experiment's B is the one
-- running its release where the environment runs another.
UPDATE instances SET experiment_id = (
    SELECT x.id FROM experiments x
    WHERE x.service = instances.service AND x.environment = instances.environment
      AND x.release_id = instances.release_id
      AND x.status IN ('starting', 'running', 'paused', 'held')
    ORDER BY x.id DESC LIMIT 1
)
WHERE stopped_at IS NULL AND release_id <> (
    SELECT COALESCE(e.release_id, 0) FROM environments e
    WHERE e.service = instances.service AND e.name = instances.environment
);
-- Where an open experiment runs the environment's own release (a config
-- experiment), nothing recorded tells A from B: -1, no experiment's id,
-- so that a restart keeps neither and starts both again, as before.
UPDATE instances SET experiment_id = -1
WHERE stopped_at IS NULL AND experiment_id IS NULL AND EXISTS (
    SELECT 1 FROM experiments x JOIN environments e
        ON e.service = x.service AND e.name = x.environment
    WHERE x.service = instances.service AND x.environment = instances.environment
      AND x.release_id = e.release_id
      AND x.status IN ('starting', 'running', 'paused', 'held')
);
