-- What each replica did, minute by minute, for the overview's charts (throughput, failures,
-- dead letters and queue wait over the last hour and the last day, across replicas) without
-- reading the history: the attempts of a busy day are hundreds of millions of rows, this is
-- one row per replica and minute. Each daemon adds its own counts to its row of the current
-- minute every few seconds (worker::activity) and deletes rows older than two days.
CREATE TABLE orderly_activity (
    minute        TIMESTAMPTZ NOT NULL,
    worker_id     TEXT NOT NULL,
    -- Items that reached COMPLETED.
    completed     BIGINT NOT NULL DEFAULT 0,
    -- Attempts that failed: retried (after an error or a timeout) or dead-lettered.
    failed        BIGINT NOT NULL DEFAULT 0,
    dead_lettered BIGINT NOT NULL DEFAULT 0,
    claimed       BIGINT NOT NULL DEFAULT 0,
    -- Claims by queue wait, one count per bucket of orderly_queue_wait_seconds (the last is
    -- past the largest bound).
    wait_buckets  BIGINT[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (minute, worker_id)
);
