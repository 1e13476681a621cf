-- Agents: processes on other hosts that connect out to a server and run
-- the work it offers them, each under the token it registered with.
CREATE TABLE agents (
    id {id},
    name TEXT NOT NULL UNIQUE,
    token_id TEXT NOT NULL,
    labels TEXT NOT NULL,
    cores BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    version TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);

-- A job offered to agents, and the lease of the one that claimed it. The
-- generation grows with every claim: a report that carries an older one is
-- from an agent whose lease was taken over, and is refused.
CREATE TABLE job_leases (
    job_id BIGINT PRIMARY KEY,
    run_id BIGINT NOT NULL,
    labels TEXT NOT NULL,
    offer TEXT NOT NULL,
    state TEXT NOT NULL,
    agent_id BIGINT,
    generation BIGINT NOT NULL,
    lease_until BIGINT,
    lost_left BIGINT NOT NULL,
    cancel_asked BIGINT NOT NULL,
    outcome TEXT,
    artifact TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX job_leases_state ON job_leases (state, job_id);

-- Each claim of a job: which agent, and how it ended (`lost` when its
-- lease ran out).
CREATE TABLE job_attempts (
    id {id},
    job_id BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    agent TEXT NOT NULL,
    state TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    ended_at BIGINT,
    reason TEXT,
    UNIQUE (job_id, generation)
);
