-- Which server runs the controllers (releases, promotions, deployments,
-- experiments, incidents, the CI dispatcher) and until when, by the
-- database's clock. The term grows with every new holder: a write that
-- names an older term comes from a server that lost the lease, and is
-- refused.
CREATE TABLE controller_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    address TEXT NOT NULL,
    term BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Artifacts' bytes in the database, in chunks, when several servers share
-- it (PostgreSQL): the server that takes the controllers over deploys
-- releases another server packed.
CREATE TABLE artifact_chunks (
    sha256 TEXT NOT NULL,
    seq BIGINT NOT NULL,
    bytes {blob} NOT NULL,
    PRIMARY KEY (sha256, seq)
);

-- Whether an environment's data directory was ever seen holding anything:
-- a server that takes the controllers over (and starts the environment on
-- its own host) may start it on an empty directory only when it was not.
ALTER TABLE environments ADD COLUMN data_in_use BIGINT NOT NULL DEFAULT 0;

-- A secret the servers sharing the database sign forwarded requests with,
-- so that the one answering trusts the client address a standby names.
CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    secret TEXT NOT NULL
)
