-- Webhook deliveries that a server verified and answered, held until the
-- server running CI has turned each into a run. Any server holds one, so
-- that a forge is answered while no server acts and a crash or takeover
-- loses no delivery. `taken_at` is set by the server turning it into a
-- run; one taken long ago was left by a server that died, and is taken
-- again.
CREATE TABLE held_webhooks (
    id {id},
    repo_id BIGINT NOT NULL,
    delivery_id TEXT,
    announced TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    taken_at BIGINT
);
CREATE UNIQUE INDEX held_webhooks_delivery ON held_webhooks (repo_id, delivery_id)
