-- The proxy's traffic per environment in ten-second buckets, kept after its
-- in-memory windows are gone (a restart, or after 30 minutes), so that an
-- incident's timeline still shows when the error rate rose.
CREATE TABLE traffic (
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    -- The bucket's start, ms since the epoch, a multiple of 10,000.
    bucket BIGINT NOT NULL,
    a_requests BIGINT NOT NULL,
    a_errors BIGINT NOT NULL,
    b_requests BIGINT NOT NULL,
    b_errors BIGINT NOT NULL,
    PRIMARY KEY (service, environment, bucket)
);
