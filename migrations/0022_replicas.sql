-- The replicas that are alive: each daemon's leader election (which runs on every replica,
-- every fifth of worker.leader_lease) records its worker id here, and a clean shutdown
-- removes it. On-call sees who is running (the page, the status API, `orderly status`);
-- rows not seen for an hour are removed by the leader.
CREATE TABLE orderly_replicas (
    worker_id  TEXT PRIMARY KEY,
    version    TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen  TIMESTAMPTZ NOT NULL DEFAULT now()
);
