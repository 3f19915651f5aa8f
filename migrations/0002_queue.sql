-- orderly's queue: the columns, indexes and triggers that turn work_items into a durable
-- queue without changing what an upstream that only knows seed 003 has to INSERT.

-- The seed's full-text index on work_items.content cannot hold content larger than 1 MiB
-- (tsvector limit: the upstream's INSERT itself would fail) and makes every enqueue pay for a
-- GIN update. Search over content is not part of the queue contract; it is dropped.
DROP INDEX IF EXISTS idx_work_items_content_fts;

ALTER TABLE work_items
    -- Copied from the order by trigger when the upstream leaves it out.
    ADD COLUMN priority          priority,
    -- When the item may run next (database clock). Retries push it into the future.
    ADD COLUMN run_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Number of the current (or last) attempt: the fencing token of every post-run write.
    ADD COLUMN attempt           INTEGER NOT NULL DEFAULT 0,
    -- Attempts made before the current budget began (a replay starts a fresh budget).
    ADD COLUMN attempt_base      INTEGER NOT NULL DEFAULT 0,
    -- Per-item ceiling on attempts; NULL means the workflow template's or the config's.
    ADD COLUMN max_attempts      INTEGER CHECK (max_attempts IS NULL OR max_attempts > 0),
    -- Lease of the current attempt; a PROCESSING item past it belongs to the rescuer.
    ADD COLUMN lease_expires_at  TIMESTAMPTZ,
    -- Which worker holds the lease (for operators).
    ADD COLUMN locked_by         TEXT,
    -- How often the item was taken back from a vanished worker.
    ADD COLUMN rescues           INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_error        TEXT,
    ADD COLUMN last_error_code   TEXT;

CREATE FUNCTION orderly_work_item_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.priority IS NULL THEN
        SELECT priority INTO NEW.priority FROM work_orders WHERE id = NEW.work_order_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER work_items_defaults BEFORE INSERT ON work_items
    FOR EACH ROW EXECUTE FUNCTION orderly_work_item_defaults();
UPDATE work_items i SET priority = o.priority FROM work_orders o
    WHERE i.work_order_id = o.id AND i.priority IS NULL;
ALTER TABLE work_items ALTER COLUMN priority SET NOT NULL;

-- One notification per statement (not per row): the workers' wake-up hint. Identical
-- notifications in one transaction are folded by PostgreSQL.
CREATE FUNCTION orderly_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderly_work', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER work_items_notify AFTER INSERT ON work_items
    FOR EACH STATEMENT EXECUTE FUNCTION orderly_notify_work();

-- The claim index: only QUEUED rows, in claim order. Small however long the history grows.
CREATE INDEX idx_work_items_ready ON work_items (priority DESC, run_at) WHERE status = 'QUEUED';
-- The rescuer's index: only leased rows.
CREATE INDEX idx_work_items_leased ON work_items (lease_expires_at) WHERE status = 'PROCESSING';

ALTER TABLE attempts
    ADD COLUMN attempt_number INTEGER,
    ADD COLUMN error_code     TEXT,
    ADD COLUMN worker_id      TEXT,
    -- Progress and cost (tokens, money) reported by the agent in its output.
    ADD COLUMN usage          JSONB;
CREATE UNIQUE INDEX attempts_item_number ON attempts (work_item_id, attempt_number);

ALTER TABLE eval_results ADD COLUMN attempt_id UUID;
CREATE UNIQUE INDEX eval_results_attempt_type ON eval_results (attempt_id, evaluation_type);

CREATE TYPE approval_source AS ENUM ('POLICY', 'HUMAN');
ALTER TABLE approval_events
    ADD COLUMN attempt_id UUID,
    ADD COLUMN source approval_source NOT NULL DEFAULT 'POLICY';
CREATE UNIQUE INDEX approval_events_attempt_source ON approval_events (attempt_id, source);

CREATE TYPE dead_letter_reason AS ENUM ('PERMANENT', 'RETRIES_EXHAUSTED', 'CRASH_LOOP');
ALTER TABLE dead_letters
    ADD COLUMN work_item_id UUID REFERENCES work_items(id) ON DELETE CASCADE,
    ADD COLUMN error_code   TEXT,
    ADD COLUMN reason       dead_letter_reason,
    -- REPLAYED or DISCARDED once processed_at is set.
    ADD COLUMN resolution   TEXT;
-- Exactly one open dead letter per failed item.
CREATE UNIQUE INDEX dead_letters_open_item ON dead_letters (work_item_id)
    WHERE processed_at IS NULL;

CREATE INDEX idx_workflow_templates_name ON workflow_templates (name) WHERE is_active;
