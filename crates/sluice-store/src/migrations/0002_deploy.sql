-- Continuous deployment: releases, environments, deployments, instances, promotions.

CREATE TABLE releases (
    id {id},
    service TEXT NOT NULL,
    number BIGINT NOT NULL,
    run_id BIGINT NOT NULL,
    repo_id BIGINT NOT NULL,
    sha TEXT NOT NULL,
    branch TEXT NOT NULL,
    title TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (service, number),
    UNIQUE (run_id)
);

CREATE TABLE environments (
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    release_id BIGINT,
    pinned BIGINT NOT NULL DEFAULT 0,
    pin_reason TEXT,
    seeded_at BIGINT,
    healthy_since BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (service, name)
);

CREATE TABLE deployments (
    id {id},
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    release_id BIGINT NOT NULL,
    previous_release_id BIGINT,
    strategy TEXT NOT NULL,
    cause TEXT NOT NULL,
    actor TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    release_id BIGINT NOT NULL,
    port BIGINT NOT NULL,
    pid BIGINT,
    start_ticks BIGINT,
    state TEXT NOT NULL,
    restarts BIGINT NOT NULL,
    config_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    stopped_at BIGINT
);
CREATE INDEX instances_env ON instances (service, environment);

CREATE TABLE promotions (
    id {id},
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    release_id BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    status TEXT NOT NULL,
    blocked_by TEXT,
    reason TEXT,
    override_by TEXT,
    override_reason TEXT,
    deployment_id BIGINT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT
);

CREATE TABLE approvals (
    promotion_id BIGINT NOT NULL,
    approver TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (promotion_id, approver)
);

ALTER TABLE tokens ADD COLUMN groups TEXT NOT NULL DEFAULT '';
