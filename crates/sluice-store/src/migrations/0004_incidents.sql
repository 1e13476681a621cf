-- Incidents with their postmortems, and the rules that enforce their lessons.

CREATE TABLE incidents (
    id {id},
    service TEXT NOT NULL,
    environment TEXT,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger_kind TEXT NOT NULL,
    trigger_detail TEXT,
    opened_by TEXT NOT NULL,
    opened_at BIGINT NOT NULL,
    first_symptom_at BIGINT NOT NULL,
    mitigated_at BIGINT,
    resolved_at BIGINT,
    postmortem TEXT,
    postmortem_by TEXT,
    postmortem_at BIGINT
);

CREATE INDEX incidents_by_service ON incidents (service, status);

CREATE TABLE rules (
    id {id},
    service TEXT NOT NULL,
    spec TEXT NOT NULL,
    note TEXT NOT NULL,
    incident_id BIGINT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    disabled_by TEXT,
    disabled_at BIGINT,
    disabled_reason TEXT
);

CREATE INDEX rules_by_service ON rules (service);

-- What each rule stopped: a run, a promotion or a deployment.
CREATE TABLE rule_blocks (
    id {id},
    rule_id TEXT NOT NULL,
    service TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
);

CREATE INDEX rule_blocks_by_rule ON rule_blocks (rule_id);
