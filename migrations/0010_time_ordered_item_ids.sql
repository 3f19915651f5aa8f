-- Time-ordered work item ids, made by the insert trigger.
--
-- The item id is the key of three indexes that every execution writes: the primary key
-- (each claim and each completion is a non-HOT update, so a new entry under the item's key),
-- attempts (work_item_id, attempt_number) and approval_events (work_item_id, attempt_id,
-- source). With the seed's random ids those entries land on random leaf pages across the
-- whole history of each index, which outgrows shared_buffers as finished work accumulates:
-- `orderly bench --history 1000000` measured the cost per item growing with the history
-- (README, Performance). A v7 id begins with the millisecond it was made, so the items being
-- worked on share the right-hand pages of every index keyed on them, however large the
-- history.
--
-- The trigger, not a column default, makes the id: a SQL function in a default is planned
-- again for every INSERT statement (migration 0006), while the trigger's plan is cached per
-- session. An upstream that supplies its own id keeps it; one that leaves it out (or writes
-- DEFAULT) gets a NULL from the column, which the trigger replaces before the NOT NULL check.
ALTER TABLE work_items ALTER COLUMN id DROP DEFAULT;

CREATE OR REPLACE FUNCTION orderly_work_item_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    order_priority priority;
    idle boolean;
BEGIN
    IF NEW.id IS NULL THEN
        NEW.id := orderly_uuid_v7();
    END IF;
    -- One query for both decisions (each query from a trigger is an executor run). No
    -- order row: both stay NULL and the foreign key rejects the INSERT as before.
    SELECT o.priority,
           NEW.status = 'QUEUED' AND NEW.run_at <= now()
           AND NOT EXISTS (SELECT 1 FROM work_items WHERE status = 'QUEUED' AND run_at <= now())
      INTO order_priority, idle
      FROM work_orders o WHERE o.id = NEW.work_order_id;
    NEW.priority := coalesce(NEW.priority, order_priority);
    IF idle THEN
        PERFORM pg_notify('orderly_work', '');
    END IF;
    RETURN NEW;
END
$$;
