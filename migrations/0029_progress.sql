-- Progress (seed 002 `progress`, `progress_message`): what a running attempt last said about
-- how far it is, one row per item, kept beside the item so the hot table is not rewritten
-- for it. Written throttled (at most once a second per item) and fenced: only the item's
-- current attempt may write, so a stale attempt cannot report.
CREATE TABLE run_progress (
    work_item_id UUID PRIMARY KEY REFERENCES work_items(id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    percent      NUMERIC(5, 2) NOT NULL CHECK (percent BETWEEN 0 AND 100),
    message      TEXT,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Keys the replicas share without configuration: `progress` signs the per-attempt tokens of
-- HTTP agents' progress callbacks, so any replica's admin server can check one.
CREATE TABLE orderly_keys (
    name TEXT PRIMARY KEY,
    key  TEXT NOT NULL CHECK (length(key) >= 32)
);
INSERT INTO orderly_keys (name, key)
VALUES ('progress', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
