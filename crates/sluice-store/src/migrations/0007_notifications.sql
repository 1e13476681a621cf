-- Notifications: channels, the routes that feed them, the outbox of
-- notifications (written with the change-log event that causes them), the
-- messages that carry them and every attempt to deliver one.

CREATE TABLE channels (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    -- The URL, password and signing key: a secret, never answered with.
    target TEXT NOT NULL,
    wait_ms BIGINT NOT NULL,
    interval_ms BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- service NULL: a server-wide default (a channel's own `--on`).
-- prefix 1: `kind` is a prefix such as `experiment.`; `*` is the prefix ''.
CREATE TABLE notify_routes (
    service TEXT,
    kind TEXT NOT NULL,
    prefix BIGINT NOT NULL,
    environment TEXT,
    channel TEXT NOT NULL
);
CREATE INDEX notify_routes_service ON notify_routes (service);

CREATE TABLE messages (
    id {id},
    channel TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    -- Retries stop here: 24 h after the message was made or last retried by hand.
    give_up_at BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX messages_due ON messages (status, next_at);
CREATE INDEX messages_channel ON messages (channel, id);

CREATE TABLE notifications (
    id {id},
    event_id BIGINT NOT NULL,
    channel TEXT NOT NULL,
    message_id BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (event_id, channel)
);
CREATE INDEX notifications_unsent ON notifications (message_id, channel);

CREATE TABLE message_attempts (
    message_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    http_status BIGINT,
    error TEXT
);
CREATE INDEX message_attempts_message ON message_attempts (message_id);

UPDATE change_log SET kind = 'deployment.' || substr(kind, 8) WHERE kind LIKE 'deploy.%';
