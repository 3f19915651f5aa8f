-- Run logs and artifacts (seed 004 `run_logs`, `run_artifacts`): what an attempt's agent
-- reported beside its result (the output's `logs` and `artifacts`), bounded, written by the
-- completer with the attempt, deleted with the item (and so with its order by the pruner).
-- Artifacts are references (name, type, size, url), never fetched by orderly.
CREATE TABLE run_logs (
    attempt_id   UUID NOT NULL,
    work_item_id UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
    line         INTEGER NOT NULL,
    level        TEXT NOT NULL,
    logged_at    TIMESTAMPTZ,
    message      TEXT NOT NULL,
    PRIMARY KEY (attempt_id, line)
);
CREATE INDEX run_logs_item ON run_logs (work_item_id);

CREATE TABLE run_artifacts (
    attempt_id   UUID NOT NULL,
    work_item_id UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    name         TEXT NOT NULL,
    type         TEXT,
    size_bytes   BIGINT CHECK (size_bytes >= 0),
    url          TEXT,
    PRIMARY KEY (attempt_id, position)
);
CREATE INDEX run_artifacts_item ON run_artifacts (work_item_id);
