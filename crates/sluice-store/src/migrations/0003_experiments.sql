-- A/B experiments: B against A in one environment, ramped by the analysis.

CREATE TABLE experiments (
    id {id},
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    release_id BIGINT NOT NULL,
    baseline_release_id BIGINT NOT NULL,
    status TEXT NOT NULL,
    step BIGINT NOT NULL,
    weight_bp BIGINT NOT NULL,
    overrides TEXT NOT NULL,
    deployment_id BIGINT,
    reason TEXT,
    decisions TEXT NOT NULL,
    report TEXT,
    created_at BIGINT NOT NULL,
    step_started_at BIGINT NOT NULL,
    finished_at BIGINT
);
