-- One row trigger per upstream INSERT instead of a row trigger plus a statement trigger with
-- a transition table (scripts/bench-insert: the statement trigger cost about 7% of a
-- single-row INSERT, the priority copy about 12%).
--
-- The wake-up rule is unchanged in meaning: NOTIFY only when the new item is runnable and
-- the queue had no runnable item before it. Rows inserted earlier by the same statement are
-- visible here, so a batch into an idle queue notifies once, for its first row; under a
-- backlog the workers are claiming in a loop and nobody is woken. NOTIFY stays a hint:
-- workers re-claim shortly after a partial claim, and poll as a fallback.
CREATE OR REPLACE FUNCTION orderly_work_item_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    order_priority priority;
    idle boolean;
BEGIN
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
DROP TRIGGER work_items_notify ON work_items;
DROP FUNCTION orderly_notify_work();
