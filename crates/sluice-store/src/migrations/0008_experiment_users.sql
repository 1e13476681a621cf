-- The users an experiment with goals has counted, kept so that a restart of
-- the server loses at most the last seconds of them (written every 2 s,
-- only the users that changed), and forgotten when the experiment ends.
CREATE TABLE experiment_users (
    experiment_id BIGINT NOT NULL,
    -- The user's 64-bit number (from their sticky key), as a signed integer.
    user_id BIGINT NOT NULL,
    -- 1 when their exposure was on B.
    b INTEGER NOT NULL,
    -- B's share at their exposure: what the user-level split check expects.
    share_b DOUBLE PRECISION NOT NULL,
    -- A bit per goal reached, in the order of `goals`.
    reached INTEGER NOT NULL,
    -- Value goals' totals: JSON [[goal index, total], ...].
    totals TEXT NOT NULL,
    PRIMARY KEY (experiment_id, user_id)
);

-- Goals given when an experiment was started by hand (`sluice ab start
-- --goal`), which replace its strategy's: JSON ["checkout=POST /checkout", ...].
ALTER TABLE experiments ADD COLUMN goals TEXT NOT NULL DEFAULT '[]';
