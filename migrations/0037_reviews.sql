-- The review loop (docs/review.md): what an item's review still has to do, one row per item,
-- kept beside the item. `stage` EVALUATE: the agent's output (`output`, from attempt
-- `output_attempt_id`) waits for the step's agent evaluators, and the next run evaluates it
-- instead of running the agent again. `stage` REVISE: the output was sent back with
-- `feedback`, and the next run gives both to the agent. NULL: nothing pending; the row keeps
-- how many revisions the item has had. Written by the completer and by a person's
-- reject-with-revise; deleted with the item.
CREATE TABLE item_reviews (
    work_item_id      UUID PRIMARY KEY REFERENCES work_items(id) ON DELETE CASCADE,
    stage             TEXT CHECK (stage IN ('EVALUATE', 'REVISE')),
    output            JSONB NOT NULL,
    output_attempt_id UUID,
    revision          INTEGER NOT NULL DEFAULT 0 CHECK (revision >= 0),
    feedback          JSONB NOT NULL DEFAULT '[]',
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Set while item_reviews holds a pending stage for the item, so the claim says which claimed
-- items need their review read (no extra read for the others). Not indexed: writing it keeps
-- the item's updates HOT.
ALTER TABLE work_items ADD COLUMN review_pending BOOLEAN NOT NULL DEFAULT false;

-- The item insert trigger of migration 0023, plus `review_pending`, orderly's bookkeeping
-- whatever the INSERT sent (an ORM that reflects the table sends NULL for it).
CREATE OR REPLACE FUNCTION orderly_work_item_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    order_priority priority;
    order_tenant uuid;
BEGIN
    IF NEW.id IS NULL THEN
        NEW.id := orderly_uuid_v7();
    END IF;
    -- No order row (or one the inserting role may not see): both stay NULL, and the foreign
    -- key (or the producer's policy) rejects the INSERT.
    SELECT o.priority, o.tenant_id INTO order_priority, order_tenant FROM work_orders o WHERE o.id = NEW.work_order_id;
    IF NEW.priority IS NULL THEN
        NEW.priority := order_priority;
    END IF;
    NEW.tenant_id := order_tenant;
    NEW.deps_pending := 0;
    NEW.has_dependencies := false;
    NEW.has_dependents := false;
    NEW.review_pending := false;
    IF NEW.status = 'QUEUED' AND NEW.run_at <= now()
       AND NOT pg_try_advisory_xact_lock_shared(31369498240052069) THEN
        PERFORM pg_notify('orderly_work', '');
    END IF;
    RETURN NEW;
END
$$;
