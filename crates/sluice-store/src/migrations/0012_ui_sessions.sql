-- The dashboard's signed-in browsers, kept in the store so that a restart,
-- an upgrade's hand-over or another server taking the controllers over
-- signs no one out. Only a digest of the cookie is kept (a copy of the
-- database opens no session), and the token behind it is re-read on every
-- page, so a revoked token ends its sessions at once.
CREATE TABLE ui_sessions (
    digest TEXT PRIMARY KEY,
    token_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
