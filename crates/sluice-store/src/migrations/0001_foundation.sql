-- The foundation: the change log, tokens, repositories, changes, runs and their logs.

CREATE TABLE change_log (
    id {id},
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    service TEXT,
    environment TEXT,
    subject TEXT NOT NULL,
    summary TEXT NOT NULL,
    before_value TEXT,
    after_value TEXT
);
CREATE INDEX change_log_at ON change_log (at);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE repos (
    id {id},
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    local_path TEXT,
    webhook_secret TEXT NOT NULL,
    status_url TEXT,
    status_token TEXT,
    hook TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE repo_refs (
    repo_id BIGINT NOT NULL,
    ref_name TEXT NOT NULL,
    sha TEXT NOT NULL,
    PRIMARY KEY (repo_id, ref_name)
);

CREATE TABLE secrets (
    repo_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (repo_id, name)
);

CREATE TABLE deliveries (
    repo_id BIGINT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (repo_id, delivery_id)
);

CREATE TABLE changes (
    id {id},
    repo_id BIGINT NOT NULL,
    ref_name TEXT NOT NULL,
    branch TEXT NOT NULL,
    sha TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    pull_request BIGINT,
    title TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (repo_id, ref_name, sha)
);

CREATE TABLE runs (
    id {id},
    change_id BIGINT NOT NULL,
    repo_id BIGINT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    service TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    artifact_sha256 TEXT
);
CREATE INDEX runs_status ON runs (status);
CREATE INDEX runs_change ON runs (change_id);

CREATE TABLE jobs (
    id {id},
    run_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    position BIGINT NOT NULL,
    needs TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    started_at BIGINT,
    finished_at BIGINT,
    UNIQUE (run_id, name)
);

CREATE TABLE steps (
    id {id},
    job_id BIGINT NOT NULL,
    position BIGINT NOT NULL,
    name TEXT NOT NULL,
    command TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    UNIQUE (job_id, position)
);

CREATE TABLE log_chunks (
    run_id BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    lines TEXT NOT NULL,
    PRIMARY KEY (run_id, first_seq)
);

CREATE TABLE artifacts (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE processes (
    pid BIGINT NOT NULL,
    start_ticks BIGINT NOT NULL,
    host TEXT NOT NULL,
    run_id BIGINT,
    what TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (host, pid)
);
